//! A TCP proxy a test controls, to cut or black-hole the bridge's broker connection.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

/// Forwards 127.0.0.1:<port> to `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped on every cut, so open connections close.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let (epoch, _) = watch::channel(0u64);
        let task = {
            let mode = mode.clone();
            let epoch = epoch.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if mode.load(Ordering::SeqCst) != PASS {
                        drop(client); // refused while cut or black-holed
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (mode, rx) = (mode.clone(), epoch.subscribe());
                    tokio::spawn(pipe(client, server, mode, rx));
                }
            })
        };
        Self {
            addr,
            mode,
            epoch,
            task,
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Half-open: connections stay open but no byte passes either way; new ones are refused.
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Back to forwarding (black-holed connections stay dead: their bytes were lost).
    pub fn restore(&self) {
        if self.mode.load(Ordering::SeqCst) == BLACKHOLE {
            self.epoch.send_modify(|e| *e += 1);
        }
        self.mode.store(PASS, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.epoch.send_modify(|e| *e += 1);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    mut epoch: watch::Receiver<u64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = copy(&mut cr, &mut sw, &mode);
    let down = copy(&mut sr, &mut cw, &mode);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = epoch.changed() => {}
    }
    // Dropping the halves closes both sockets.
}

async fn copy<R: AsyncReadExt + Unpin, W: AsyncWriteExt + Unpin>(
    r: &mut R,
    w: &mut W,
    mode: &AtomicU8,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.load(Ordering::SeqCst) {
            PASS => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            BLACKHOLE => {} // swallowed
            _ => return,
        }
    }
}
