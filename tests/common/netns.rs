//! A network namespace of a test's own, joined to the host by two veth pairs: one that clients
//! use to reach a daemon inside, one that the daemon uses to reach its database. The database
//! link can be cut as a real partition — a black hole, not a refusal: both ends get a static
//! neighbour entry for a MAC address nobody has, so packets leave and are never received (no
//! RST, no ICMP) — and healed again. Dropped with the value.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::process::Command;

/// One veth pair: the host end and the namespace end, each with an address.
pub struct Link {
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

pub struct Netns {
    pub name: String,
    /// Clients on the host reach the daemon at `client.ns_ip`.
    pub client: Link,
    /// The daemon reaches the database at `db.host_ip`.
    pub db: Link,
}

const NOBODY_MAC: &str = "02:00:00:00:00:01";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Makes the namespace and both links; `Err` says why namespaces cannot be made here.
    pub fn create() -> Result<Self, String> {
        let routes = Command::new("ip")
            .args(["-4", "route"])
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        let mut r = [0u8; 4];
        aws_lc_rs::rand::fill(&mut r).unwrap();
        let tag = hex::encode(r);
        // a /24 pair no other test (or the host) uses
        let n = (1..=250u32)
            .map(|i| (u32::from(r[0]) + i) % 250 + 1)
            .find(|n| {
                !routes.contains(&format!("10.77.{n}.")) && !routes.contains(&format!("10.78.{n}."))
            })
            .ok_or("no free test subnet")?;
        let name = format!("kgns{tag}");
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name: name.clone(),
            client: Link {
                host_if: format!("kgc{tag}"),
                ns_if: format!("kgcn{tag}"),
                host_ip: format!("10.77.{n}.1"),
                ns_ip: format!("10.77.{n}.2"),
            },
            db: Link {
                host_if: format!("kgd{tag}"),
                ns_if: format!("kgdn{tag}"),
                host_ip: format!("10.78.{n}.1"),
                ns_ip: format!("10.78.{n}.2"),
            },
        };
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        for l in [&ns.client, &ns.db] {
            ip(&[
                "link", "add", &l.host_if, "type", "veth", "peer", "name", &l.ns_if,
            ])?;
            ip(&["link", "set", &l.ns_if, "netns", &name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", l.host_ip),
                "dev",
                &l.host_if,
            ])?;
            ip(&["link", "set", &l.host_if, "up"])?;
            ip(&[
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                &format!("{}/24", l.ns_ip),
                "dev",
                &l.ns_if,
            ])?;
            ip(&["netns", "exec", &name, "ip", "link", "set", &l.ns_if, "up"])?;
        }
        Ok(ns)
    }

    /// Cuts the database link: from now on nothing sent either way arrives.
    pub fn cut_db(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "neigh",
            "replace",
            &self.db.host_ip,
            "lladdr",
            NOBODY_MAC,
            "dev",
            &self.db.ns_if,
            "nud",
            "permanent",
        ])
        .unwrap();
        ip(&[
            "neigh",
            "replace",
            &self.db.ns_ip,
            "lladdr",
            NOBODY_MAC,
            "dev",
            &self.db.host_if,
            "nud",
            "permanent",
        ])
        .unwrap();
    }

    /// Heals the database link (neighbours are resolved again).
    pub fn heal_db(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "neigh",
            "del",
            &self.db.host_ip,
            "dev",
            &self.db.ns_if,
        ])
        .unwrap();
        ip(&["neigh", "del", &self.db.ns_ip, "dev", &self.db.host_if]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // deleting the namespace deletes its veth ends, and with them the pairs
        let _ = ip(&["netns", "del", &self.name]);
        for l in [&self.client, &self.db] {
            let _ = ip(&["link", "del", &l.host_if]);
        }
    }
}
