//! A nats-server child process for `gossamer up` and `gossamer bench`: JetStream on,
//! storage under the data directory, loopback only, stopped with the parent.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where Debian and others put nats-server when it is not on PATH.
const EXTRA_DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

pub const INSTALL_HINT: &str =
    "nats-server was not found ($GOSSAMER_NATS_SERVER, PATH, /usr/sbin). Install it (Debian/Ubuntu: `sudo apt-get install -y nats-server`), \
     or point Gossamer at a running server with --nats nats://HOST:PORT";

/// The nats-server executable: `$GOSSAMER_NATS_SERVER`, PATH, then the usual sbin
/// directories.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GOSSAMER_NATS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A running nats-server; killed and reaped on drop.
pub struct NatsServer {
    child: Child,
    pub port: u16,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts nats-server on 127.0.0.1:`port` (0 picks a free port) with JetStream
    /// storage in `store_dir`, logging to `store_dir/nats-server.log`, and waits until
    /// it accepts connections.
    pub fn start(store_dir: &Path, port: u16) -> Result<Self> {
        let bin = find_binary().context(INSTALL_HINT)?;
        std::fs::create_dir_all(store_dir).with_context(|| format!("creating {}", store_dir.display()))?;
        let port = if port == 0 { free_port()? } else { port };
        let log = store_dir.join("nats-server.log");
        use std::os::unix::process::CommandExt;
        let child = Command::new(&bin)
            // Its own process group: Ctrl-C in a terminal reaches the nodes, which stop
            // while the bus is still there to take their last acks; this server is
            // stopped after them.
            .process_group(0)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store_dir)
            .args(["-l"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("nats-server exited with {status} before listening; see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within 20 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Asks nats-server to stop (SIGTERM, so JetStream closes its files) and waits.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lowers `cfg`'s stream caps not in `keep` when a nats-server storing under `store`
/// would not have room to set them aside: JetStream's storage limit is 75% of the
/// disk's free space at its start, and SHARDS (uncapped) and the queues' bucket need
/// room beside them, so the caps take at most half of the free space. Returns the free
/// bytes when it lowered them.
pub fn fit_caps_to_disk(cfg: &mut gossamer_config::Config, store: &Path, keep: [bool; 3]) -> Option<u64> {
    let free = free_bytes(store)?;
    cfg.fit_stream_caps((free / 2).min(i64::MAX as u64) as i64, keep).then_some(free)
}

/// Bytes free to unprivileged users on the file system holding `path` (or its nearest
/// existing parent); None when it cannot be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a statvfs buffer statvfs fills on success.
    let stats = unsafe {
        if libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    Some((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// A port nobody listens on now (the OS picks it).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when something accepts connections on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// [`fit_caps_to_disk`], saying so on stderr when it lowers the caps.
pub fn fit_caps_to_disk_saying(cfg: &mut gossamer_config::Config, store: &Path, keep: [bool; 3]) {
    if let Some(free) = fit_caps_to_disk(cfg, store, keep) {
        let show = gossamer_config::show_bytes;
        eprintln!(
            "{} free under {}: caps of new streams lowered to fit (those given as flags kept): LOGS {}, DEADLETTER {}, \
             NOTIFY {} (--logs-max-bytes, --deadletter-max-bytes, --notify-max-bytes set them)",
            show(free.min(i64::MAX as u64) as i64),
            store.display(),
            show(cfg.logs_max_bytes),
            show(cfg.deadletter_max_bytes),
            show(cfg.notify_max_bytes)
        );
    }
}
