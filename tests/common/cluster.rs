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

impl Cluster {
    /// Runs SQL as the cluster's superuser and returns the first column of the first row.
    pub fn psql_value(&self, sql: &str) -> String {
        let out = Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!("psql -p {} -Atqc \"{sql}\"", self.port),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A hot standby of this (running) cluster, streaming from it (`pg_basebackup -R`), started.
    /// This cluster's `pg_hba` must let `postgres` replicate from 127.0.0.1.
    pub fn standby(&self, hba: &str) -> Cluster {
        let s = Cluster::create(hba);
        let data = s.data_dir();
        // emptied, not removed: postgres may not create it again under its parent
        for e in std::fs::read_dir(&data).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        run(Command::new("su").args([
            "postgres",
            "-c",
            &format!(
                "pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {} -X stream -R",
                self.port,
                data.display()
            ),
        ]));
        s.ctl("start");
        s
    }

    /// Kills the whole cluster at once (postmaster and every backend: `kill -9` of its process
    /// group), as a crashed machine would stop it.
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_string();
        run(Command::new("kill").args(["-9", "--", &format!("-{pid}")]));
    }
}
