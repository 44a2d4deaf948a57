//! The slow-consumer close is a well-formed stream (issue 11): a client that stopped reading and
//! was marked slow (default policy "close") gets whole frames, then the 1008 close frame, then
//! EOF, even when it only starts reading 2 s after being marked (never a frame cut in half
//! followed by the close); one that never reads is dropped at `close_timeout`. Each test runs
//! on both monoio drivers against an in-process daemon on a real socket.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{daemon, wait_until, Client};

both_drivers!(slow_consumer_close_is_whole_frames_then_1008_then_eof);

/// Size of message `k`: varied (1.5–7.5 KiB), so a frame cut short or resumed in the wrong
/// place cannot pass for another one.
fn size_of(k: u32) -> usize {
    1500 + (k as usize * 7919) % 6000
}

fn message(k: u32) -> Vec<u8> {
    let mut m = vec![(k % 251) as u8; size_of(k)];
    m[..4].copy_from_slice(&k.to_be_bytes());
    m
}

/// What a stalled client finally read.
#[derive(Debug)]
struct Outcome {
    messages: u32,
    close_code: Option<u16>,
    bytes_after_close: usize,
    /// Bytes of a frame left incomplete when the stream ended (a frame cut short).
    partial: usize,
    eof: bool,
}

/// Read the raw stream until EOF (answering the server's close as a client must), parsing it
/// frame by frame: every data frame must be message 0, 1, 2 ... whole and byte-exact.
fn read_stream(s: &mut std::net::TcpStream, deadline: Duration) -> Outcome {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 65536];
    let mut out = Outcome {
        messages: 0,
        close_code: None,
        bytes_after_close: 0,
        partial: 0,
        eof: false,
    };
    let mut at = 0;
    while start.elapsed() < deadline {
        match s.read(&mut tmp) {
            Ok(0) => {
                out.eof = true;
                if out.close_code.is_none() {
                    out.partial = buf.len() - at;
                }
                break;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e} after {} messages", out.messages),
        }
        if out.close_code.is_some() {
            out.bytes_after_close = buf.len() - at;
            continue;
        }
        while let Some((opcode, payload, used)) = frame(&buf[at..]) {
            at += used;
            match opcode {
                0x2 => {
                    let k = out.messages;
                    assert_eq!(
                        payload.len(),
                        size_of(k),
                        "message {k}: wrong length (cut frame?)"
                    );
                    assert!(
                        payload == message(k),
                        "message {k}: wrong bytes (cut frame?)"
                    );
                    out.messages += 1;
                }
                0x8 => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    out.close_code = Some(u16::from_be_bytes([payload[0], payload[1]]));
                    // Answer the close (masked, as a client must).
                    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, payload[0], payload[1]])
                        .unwrap();
                    break;
                }
                op => panic!("unexpected opcode {op:#x} after {} messages", out.messages),
            }
        }
    }
    out
}

/// One whole server frame at the start of `b`: (opcode, payload, bytes used).
fn frame(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[0] & 0x80, 0x80, "a server frame here is never fragmented");
    assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
    let (len, h) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= h + len).then(|| (b[0] & 0x0f, &b[h..h + len], h + len))
}

fn slow_consumer_close_is_whole_frames_then_1008_then_eof(driver: &str) {
    // The default close_timeout; every other limit at its default too: slow_consumer =
    // "close", max_buffered_bytes 1 MiB, socket_unsent_bytes 256 KiB.
    const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    let d = daemon(driver, "shards = 1\n[rooms]\necho_to_sender = false\n");
    let addr = d.local_addr();
    // Two stalled clients (not read for now; a 256 KiB receive buffer, so that once one reads,
    // its window is larger than the loopback MSS and it drains at full speed) and a publisher.
    let late = Client::connect_small_rcvbuf(addr, "/ws/slow", 256 * 1024);
    let never = Client::connect_small_rcvbuf(addr, "/ws/slow", 256 * 1024);
    let mut publisher = Client::connect(addr, "/ws/slow");
    wait_until(Duration::from_secs(5), "3 connections", || {
        d.stats().snapshot().connections == 3
    });
    // Publish until both stalled clients are marked slow (and closed by the policy).
    let mut k = 0u32;
    let marked = loop {
        publisher.send_binary(&message(k));
        k += 1;
        if k % 8 == 0 && d.stats().snapshot().slow_consumer_closes >= 2 {
            break Instant::now();
        }
        assert!(k < 100_000, "never marked slow after {k} messages");
    };

    // One starts reading 2 s after being marked: whole frames, the 1008 close, EOF.
    std::thread::sleep(Duration::from_secs(2)); // the scenario's delay, not a wait for an event
    let mut s = late.stream;
    let got = read_stream(&mut s, Duration::from_secs(10));
    println!(
        "late reader ({driver}): {k} published, {got:?}, EOF {:?} after marked",
        marked.elapsed()
    );
    assert!(got.messages > 0, "{got:?}");
    assert_eq!(got.close_code, Some(1008), "{got:?}");
    assert_eq!(got.bytes_after_close, 0, "{got:?}");
    assert_eq!(got.partial, 0, "a frame cut short: {got:?}");
    assert!(got.eof, "no EOF after the close: {got:?}");
    assert!(
        marked.elapsed() < CLOSE_TIMEOUT,
        "the late reader's close took until close_timeout"
    );

    // The other never reads: its close frame cannot be delivered, so the connection ends at
    // close_timeout, not before (nothing else can end it) and not much after (one sweep tick).
    wait_until(
        CLOSE_TIMEOUT + Duration::from_secs(5),
        "the never-reading client dropped",
        || d.stats().snapshot().connections <= 1,
    );
    let waited = marked.elapsed();
    println!("never-reading client ({driver}) dropped {waited:?} after it was marked");
    // `marked` was taken a little after the daemon marked it: allow that much early.
    assert!(
        waited + Duration::from_millis(200) >= CLOSE_TIMEOUT,
        "dropped after {waited:?}"
    );
    drop(never);
    d.stop().unwrap();
}
