//! A private Kafka-protocol broker (tansu, in-memory storage) for tests that must control the
//! broker's reachability. It advertises the address of a proxy in front of it, so that every
//! client connection (bootstrap and per-broker) goes through that proxy.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Child,
    pub port: u16,
}

fn binary() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo_bin = format!("{home}/.cargo/bin/tansu");
        if Path::new(&cargo_bin).exists() {
            cargo_bin
        } else {
            "tansu".to_owned()
        }
    })
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tansu {
    /// Listens on `port`, tells clients to connect to `advertised_port`.
    pub fn start(port: u16, advertised_port: u16) -> Self {
        let listen = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised_port}");
        let child = Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts (scripts/services.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
