//! Test engine `sockets`: every lifecycle call first tries each way out of the sandbox
//! that is not `wasi:http`: a TCP connect to `127.0.0.1:<port>`, a UDP bind and send to
//! `127.0.0.1:<udp-port>`, a name lookup of `localhost`, and reading a file
//! (`/etc/hostname`, then listing `/` and `.`). It then fails with
//! `failed("sockets: tcp=…; udp=…; lookup=…; file=…")`, each part `denied: <the error it
//! got>` or `ALLOWED`; it fails even when everything is denied, so a test reads the
//! outcome from the error. `describe` and `configure` behave.
//!
//! Settings: `port` (default 9, the discard port), the TCP port tried; `udp-port`
//! (default 9), the UDP port sent to.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineError, EngineInfo, Result, Settings};

struct Sockets {
    port: u16,
    udp_port: u16,
}

fn outcome(probe: std::result::Result<String, String>) -> String {
    match probe {
        Ok(what) => {
            sdk::warn!("let through: {what}");
            "ALLOWED".to_string()
        }
        Err(e) => format!("denied: {e}"),
    }
}

impl Sockets {
    fn tcp(&self) -> std::result::Result<String, String> {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = TcpStream::connect(to).map_err(|e| e.to_string())?;
        Ok(format!("connected to {to} from {:?}", stream.local_addr()))
    }

    fn udp(&self) -> std::result::Result<String, String> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, self.udp_port));
        let sent = socket.send_to(b"sockets", to).map_err(|e| format!("send: {e}"))?;
        Ok(format!("sent {sent} bytes to {to}"))
    }

    fn lookup(&self) -> std::result::Result<String, String> {
        let found: Vec<SocketAddr> = ("localhost", 0).to_socket_addrs().map_err(|e| e.to_string())?.collect();
        Ok(format!("localhost is {found:?}"))
    }

    fn file(&self) -> std::result::Result<String, String> {
        // Any one of these succeeding means the engine can see a filesystem.
        let read = match std::fs::read_to_string("/etc/hostname") {
            Ok(text) => return Ok(format!("read /etc/hostname: {}", text.trim())),
            Err(e) => e,
        };
        let mut listed = Vec::new();
        for dir in ["/", "."] {
            match std::fs::read_dir(dir) {
                Ok(entries) => return Ok(format!("listed {dir}: {} entries", entries.count())),
                Err(e) => listed.push(format!("list {dir}: {e}")),
            }
        }
        Err(format!("read /etc/hostname: {read}, {}", listed.join(", ")))
    }

    /// The error every lifecycle call fails with.
    fn try_out(&self) -> EngineError {
        EngineError::Failed(format!(
            "sockets: tcp={}; udp={}; lookup={}; file={}",
            outcome(self.tcp()),
            outcome(self.udp()),
            outcome(self.lookup()),
            outcome(self.file())
        ))
    }
}

impl Engine for Sockets {
    fn describe() -> EngineInfo {
        EngineInfo::new("sockets", env!("CARGO_PKG_VERSION")).feature("test-only")
    }
    fn configure(settings: &Settings) -> Result<Self> {
        let port = settings.value("port")?.unwrap_or(9);
        let udp_port = settings.value("udp-port")?.unwrap_or(9);
        Ok(Sockets { port, udp_port })
    }
    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        Err(self.try_out())
    }
    fn image_load(&mut self, _image: &str, _archive: Archive) -> Result<()> {
        Err(self.try_out())
    }
    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        Err(self.try_out())
    }
    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        Err(self.try_out())
    }
    fn agent_start(&mut self, _spec: AgentSpec) -> Result<AgentInfo> {
        Err(self.try_out())
    }
    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        Err(self.try_out())
    }
    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        Err(self.try_out())
    }
}

sdk::export_engine!(Sockets);
