//! A subscriber speaking HTTP to Webdis itself (`GET /SUBSCRIBE/<channel>`,
//! chunked), handing every channel payload, in the order Webdis wrote
//! them, to a function: the independent reader of the delta tests and of
//! the benchmark's row 13.
#![allow(dead_code)]

use missionstream::protocol::{self, ObjectSplitter, SubscriptionItem};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct RawSubscriber {
    stream: TcpStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawSubscriber {
    /// Subscribes and returns once Webdis acknowledged the subscription.
    pub fn start(port: u16, channel: &str, on: impl Fn(String) + Send + 'static) -> RawSubscriber {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET /SUBSCRIBE/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = stream.try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut line = String::new();
            // The response head.
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut splitter = ObjectSplitter::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
                    return;
                };
                let mut chunk = vec![0u8; n + 2];
                if n == 0 || r.read_exact(&mut chunk).is_err() {
                    return;
                }
                splitter.push(&chunk[..n]);
                while let Ok(Some(obj)) = splitter.next_object() {
                    match protocol::parse_subscription_object(&obj) {
                        Ok(SubscriptionItem::Subscribed { .. }) => {
                            let _ = tx.send(());
                        }
                        Ok(SubscriptionItem::Message { payload, .. }) => on(payload),
                        _ => {}
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("Webdis acknowledges the subscription");
        RawSubscriber {
            stream,
            thread: Some(thread),
        }
    }
}

impl Drop for RawSubscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
