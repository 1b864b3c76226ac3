//! A minimal HTTP/1.1 client for tests against demo-backend: enough to send
//! a request and read a Content-Length response, on a fresh or a kept-alive
//! connection, over IPv4 or IPv6.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use crate::servers::CONNECT_TIMEOUT;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The `name` field of demo-backend's JSON at `/`.
    pub fn backend_name(&self) -> String {
        self.json_field("name")
    }

    /// The `version` field of demo-backend's JSON at `/`.
    pub fn backend_version(&self) -> String {
        self.json_field("version")
    }

    fn json_field(&self, field: &str) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        json[field].as_str().unwrap_or_default().to_owned()
    }
}

/// One keep-alive connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    pub fn open(to: impl Into<SocketAddr>) -> io::Result<Self> {
        Self::open_from(None, to)
    }

    /// [`Connection::open`] from the local address `from` (one of the
    /// client's), if given.
    pub fn open_from(from: Option<IpAddr>, to: impl Into<SocketAddr>) -> io::Result<Self> {
        let to = to.into();
        let stream = match from {
            Some(from) => crate::servers::connect_from(from, to)?,
            None => TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?,
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Connection {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    pub fn request(&mut self, method: &str, path: &str) -> io::Result<Response> {
        // One write: `write!` on the stream would send each piece as its
        // own segment, and Nagle would hold the later ones for an ACK.
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
        self.writer.write_all(request.as_bytes())?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(io::Error::other)?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A request on a connection of its own.
pub fn request(to: impl Into<SocketAddr>, method: &str, path: &str) -> io::Result<Response> {
    request_from(None, to, method, path)
}

/// [`request`] from the local address `from`, if given.
pub fn request_from(from: Option<IpAddr>, to: impl Into<SocketAddr>, method: &str, path: &str) -> io::Result<Response> {
    Connection::open_from(from, to)?.request(method, path)
}

/// `GET /` with `Connection: close` on a connected `stream`, the response
/// read to its end within `timeout`; only a complete 200 counts. The
/// error names the step that failed.
pub fn get_and_close(stream: &mut TcpStream, timeout: Duration) -> Result<(), String> {
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::with_capacity(512);
    stream.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "response {:?}",
            String::from_utf8_lossy(&response[..response.len().min(40)])
        ))
    }
}
