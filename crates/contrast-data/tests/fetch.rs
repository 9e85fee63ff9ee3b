//! Downloads through the real client against a local HTTP server: an interrupted
//! transfer continues with a range request, the content is verified, and a file
//! that does not match its checksum is deleted.
#![cfg(feature = "download")]

use contrast_data::fetch::{RemoteFile, download};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// How the server answers one request.
#[derive(Clone, Copy)]
enum Answer {
    /// Announce the whole body but send only the first `n` bytes, then hang up.
    CutAfter(usize),
    /// Honour a `Range: bytes=N-` header (206), or send everything (200).
    Whole,
}

/// Serves `body` for each answer in turn; returns the base URL and the `Range`
/// headers received.
fn serve(body: Vec<u8>, answers: Vec<Answer>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for answer in answers {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().trim_end_matches('-').to_string());
                }
            }
            seen.lock().unwrap().push(range.clone());
            let from: usize = range.as_deref().map_or(0, |r| r.parse().unwrap());
            let (status, part) = match (answer, from) {
                (Answer::Whole, 0) => ("200 OK", &body[..]),
                (Answer::Whole, f) => ("206 Partial Content", &body[f..]),
                (Answer::CutAfter(n), _) => ("200 OK", &body[..n]),
            };
            let len = match answer {
                Answer::CutAfter(_) => body.len(),
                Answer::Whole => part.len(),
            };
            let head =
                format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(part);
        }
    });
    (url, ranges)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn an_interrupted_download_resumes_and_is_verified() {
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let body = gzip(&content);
    let half = body.len() / 2;
    let (url, ranges) = serve(body.clone(), vec![Answer::CutAfter(half), Answer::Whole]);
    let dest = tempfile::tempdir().unwrap();
    let file = RemoteFile {
        name: "data.gz".into(),
        url,
        sha256: hex(&content),
    };
    let calls = Mutex::new(0u64);
    let progress = |_: &str, done: u64, _: Option<u64>| *calls.lock().unwrap() = done;
    let err = download(std::slice::from_ref(&file), dest.path(), &progress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("broke off") && err.contains("again"), "{err}");
    let part = dest.path().join("data.gz.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len() as usize, half);

    download(std::slice::from_ref(&file), dest.path(), &progress).unwrap();
    assert_eq!(std::fs::read(dest.path().join("data.gz")).unwrap(), body);
    assert!(!part.exists());
    assert_eq!(*calls.lock().unwrap() as usize, body.len());
    assert_eq!(*ranges.lock().unwrap(), [None, Some(half.to_string())]);
}

#[test]
fn a_checksum_mismatch_deletes_the_download() {
    let body = gzip(b"not what was promised");
    let (url, _) = serve(body, vec![Answer::Whole]);
    let dest = tempfile::tempdir().unwrap();
    let file = RemoteFile {
        name: "x.gz".into(),
        url,
        sha256: hex(b"the real content"),
    };
    let err = download(&[file], dest.path(), &|_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("x.gz"),
        "{err}"
    );
    assert!(std::fs::read_dir(dest.path()).unwrap().next().is_none());
}
