//! Template rendering (minijinja) and atomic file writes.
//!
//! Templates call `secret("path")` for a secret's fields and may use the filters `tojson`,
//! `b64encode`, `dotenv` (`KEY="value"` lines, quoted and escaped) and `envfile` (`KEY=value`
//! lines; values with a newline are refused). Undefined fields are errors, never empty strings.
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Fetched secrets: path → field → value.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

fn env_name(k: &str) -> String {
    k.chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

fn environment(
    secrets: Arc<Secrets>,
    missing: Arc<Mutex<BTreeSet<String>>>,
) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_function("secret", move |path: String| -> Result<Value, Error> {
        match secrets.get(&path) {
            Some(f) => Ok(Value::from(f.clone())),
            None => {
                if let Ok(mut m) = missing.lock() {
                    m.insert(path.clone());
                }
                Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("secret {path:?} is not available"),
                ))
            }
        }
    });
    env.add_filter("b64encode", |v: String| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
    });
    env.add_filter("dotenv", |v: Value| -> Result<String, Error> {
        let mut s = String::new();
        for k in v.try_iter()? {
            let key = k.to_string();
            let val = v.get_item(&k)?.to_string();
            let esc = val
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
                .replace('$', "\\$");
            s.push_str(&format!("{}=\"{esc}\"\n", env_name(&key)));
        }
        Ok(s)
    });
    env.add_filter("envfile", |v: Value| -> Result<String, Error> {
        let mut s = String::new();
        for k in v.try_iter()? {
            let key = k.to_string();
            let val = v.get_item(&k)?.to_string();
            if val.contains('\n') {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("field {key:?} has a newline; use dotenv"),
                ));
            }
            s.push_str(&format!("{}={val}\n", env_name(&key)));
        }
        Ok(s)
    });
    env
}

/// Checks a template parses (the injector refuses a pod whose template does not).
pub fn check_template(text: &str) -> Result<(), String> {
    let env = environment(Arc::default(), Arc::default());
    env.template_from_str(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Rendering outcome.
pub enum Rendered {
    /// The text.
    Done(String),
    /// These secrets must be fetched first.
    Needs(BTreeSet<String>),
}

/// Renders `text` with `secrets`; reports which unknown secrets it asked for.
pub fn render(text: &str, secrets: &Arc<Secrets>) -> Result<Rendered, String> {
    let missing: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let env = environment(secrets.clone(), missing.clone());
    let t = env.template_from_str(text).map_err(|e| e.to_string())?;
    match t.render(()) {
        Ok(s) => Ok(Rendered::Done(s)),
        Err(e) => {
            let m = missing.lock().map(|m| m.clone()).unwrap_or_default();
            if m.is_empty() {
                Err(e.to_string())
            } else {
                Ok(Rendered::Needs(m))
            }
        }
    }
}

/// Writes `contents` to `dir/name` atomically: a temporary file in the same directory,
/// fsynced, mode and owner set, renamed over the old one, directory fsynced. Unchanged
/// contents: nothing is written (`Ok(false)`).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dest = dir.join(name);
    if let Ok(old) = std::fs::read(&dest) {
        if old == contents {
            return Ok(false);
        }
    }
    let mut r = [0u8; 6];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(r)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(&tmp, uid, gid)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_helpers_and_reports_missing_secrets() {
        let mut s = Secrets::new();
        s.insert(
            "app/db".into(),
            [
                ("user".to_string(), "app".to_string()),
                ("pass-word".to_string(), "a\"b$c\nd".to_string()),
            ]
            .into_iter()
            .collect(),
        );
        let s = Arc::new(s);
        let Rendered::Done(out) = render(
            "{{ secret('app/db').user }}:{{ secret('app/db') | dotenv }}",
            &s,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(out, "app:PASS_WORD=\"a\\\"b\\$c\\nd\"\nUSER=\"app\"\n");
        let Rendered::Done(out) = render("{{ secret('app/db').user | b64encode }}", &s).unwrap()
        else {
            panic!()
        };
        assert_eq!(out, "YXBw");
        let Rendered::Done(out) = render("{{ secret('app/db') | tojson }}", &s).unwrap() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["user"], "app");
        match render("{{ secret('other/x').a }}", &s).unwrap() {
            Rendered::Needs(m) => assert!(m.contains("other/x")),
            Rendered::Done(_) => panic!(),
        }
        assert!(
            render("{{ secret('app/db').nope }}", &s).is_err(),
            "undefined fields are errors"
        );
        assert!(
            render("{{ secret('app/db') | envfile }}", &s).is_err(),
            "newline refused"
        );
        assert!(check_template("{{ oops").is_err());
    }

    #[test]
    fn writes_atomically_with_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        assert!(write_atomic(d.path(), "a", b"one", 0o400, None, None).unwrap());
        assert!(!write_atomic(d.path(), "a", b"one", 0o400, None, None).unwrap());
        assert!(write_atomic(d.path(), "a", b"two", 0o400, None, None).unwrap());
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"two");
        let mode = std::fs::metadata(d.path().join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
