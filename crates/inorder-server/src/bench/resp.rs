//! A minimal Redis (RESP2) client for the peer comparison: commands written back to back on one
//! connection (pipelining), replies read in order.
//!
//! Why not the `redis` crate: the comparison needs four commands (`XADD`, `XGROUP`,
//! `XREADGROUP`, `XACK`) and a client whose own cost is small and visible; a dependency
//! compiled into every build of the server for a benchmark would cost more than these lines.

use std::{future::Future, pin::Pin};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream},
    net::TcpStream,
};

/// The longest reply line or bulk string the client accepts (the bench's events are ~300 B;
/// a `XREADGROUP` reply is an array of them, each read separately).
const REPLY_ITEM_BYTES_MAX: usize = 1 << 20;
/// The most elements of one reply array.
const REPLY_ARRAY_MAX: usize = 1 << 20;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The elements of an array reply (none for a null array).
    pub(crate) fn items(&self) -> &[Value] {
        match self {
            Self::Array(Some(items)) => items,
            _ => &[],
        }
    }

    /// The bytes of a bulk or simple string.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Bulk(Some(bytes)) => bytes,
            Self::Simple(text) => text.as_bytes(),
            _ => &[],
        }
    }
}

/// One connection to Redis.
pub(crate) struct Resp {
    stream: BufStream<TcpStream>,
    out: Vec<u8>,
}

impl Resp {
    pub(crate) async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("redis at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream: BufStream::new(stream), out: Vec::new() })
    }

    /// Sends `commands` back to back and reads their replies; an error reply fails.
    pub(crate) async fn pipeline(
        &mut self,
        commands: &[Vec<Vec<u8>>],
    ) -> anyhow::Result<Vec<Value>> {
        self.out.clear();
        for command in commands {
            encode(&mut self.out, command);
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(read_value(&mut self.stream).await?);
        }
        Ok(replies)
    }

    /// One command, one reply.
    pub(crate) async fn call(&mut self, command: Vec<Vec<u8>>) -> anyhow::Result<Value> {
        let mut replies = self.pipeline(std::slice::from_ref(&command)).await?;
        replies.pop().context("no reply")
    }
}

/// A command from its arguments.
pub(crate) fn command<I, A>(args: I) -> Vec<Vec<u8>>
where
    I: IntoIterator<Item = A>,
    A: AsRef<[u8]>,
{
    args.into_iter().map(|arg| arg.as_ref().to_vec()).collect()
}

fn encode(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

type Reading<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Value>> + Send + 'a>>;

fn read_value(stream: &mut BufStream<TcpStream>) -> Reading<'_> {
    Box::pin(async move {
        let mut line = Vec::new();
        let read =
            (&mut *stream).take(REPLY_ITEM_BYTES_MAX as u64).read_until(b'\n', &mut line).await?;
        if read == 0 || !line.ends_with(b"\r\n") {
            bail!("redis closed the connection or sent an over-long line");
        }
        let text = std::str::from_utf8(&line[1..line.len() - 2]).context("reply line")?;
        match line[0] {
            b'+' => Ok(Value::Simple(text.to_owned())),
            b'-' => bail!("redis: {text}"),
            b':' => Ok(Value::Int(text.parse()?)),
            b'$' => {
                let len: i64 = text.parse()?;
                if len < 0 {
                    return Ok(Value::Bulk(None));
                }
                let len = usize::try_from(len)?;
                anyhow::ensure!(len <= REPLY_ITEM_BYTES_MAX, "bulk string of {len} bytes");
                let mut bytes = vec![0; len + 2];
                stream.read_exact(&mut bytes).await?;
                bytes.truncate(len);
                Ok(Value::Bulk(Some(bytes)))
            }
            b'*' => {
                let len: i64 = text.parse()?;
                if len < 0 {
                    return Ok(Value::Array(None));
                }
                let len = usize::try_from(len)?;
                anyhow::ensure!(len <= REPLY_ARRAY_MAX, "array of {len} elements");
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(read_value(stream).await?);
                }
                Ok(Value::Array(Some(items)))
            }
            other => bail!("unknown reply type {:?}", char::from(other)),
        }
    })
}
