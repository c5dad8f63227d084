//! A PostgreSQL cluster of its own for a test (`pg_createcluster` on a free port), dropped with
//! the value: for what the shared test server must not see (TLS-only access, a restart).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::path::PathBuf;
use std::process::Command;

pub struct Cluster {
    pub version: String,
    pub name: String,
    pub port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .status();
    }
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Creates (not starts) a cluster; `pg_hba` is `hba` (loopback lines).
    pub fn create(hba: &str) -> Self {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect(
                "PostgreSQL's cluster tools (pg_createcluster) are part of the test environment",
            )
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .max()
            .unwrap();
        let mut r = [0u8; 4];
        aws_lc_rs::rand::fill(&mut r).unwrap();
        let name = format!("kgtest{}", hex::encode(r));
        let port = free_port();
        run(Command::new("pg_createcluster").args([&version, &name, "-p", &port.to_string()]));
        let c = Cluster {
            version,
            name,
            port,
        };
        std::fs::write(c.conf_dir().join("pg_hba.conf"), hba).unwrap();
        c.append_conf("listen_addresses = '127.0.0.1'\n");
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/var/lib/postgresql/{}/{}",
            self.version, self.name
        ))
    }

    pub fn conf_dir(&self) -> PathBuf {
        PathBuf::from(format!("/etc/postgresql/{}/{}", self.version, self.name))
    }

    pub fn append_conf(&self, text: &str) {
        let p = self.conf_dir().join("postgresql.conf");
        let mut pc = std::fs::read_to_string(&p).unwrap();
        pc.push('\n');
        pc += text;
        std::fs::write(p, pc).unwrap();
    }

    pub fn ctl(&self, action: &str) {
        run(Command::new("pg_ctlcluster").args([&self.version, &self.name, action]));
    }

    /// Runs SQL as the cluster's superuser over its local socket.
    pub fn psql(&self, sql: &str) {
        run(Command::new("su").args([
            "postgres",
            "-c",
            &format!("psql -p {} -qc \"{sql}\"", self.port),
        ]));
    }
}
