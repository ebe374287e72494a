//! Decoding primitives shared by every wire type: a `Short` error that means "need more
//! bytes", and checked readers that never panic and never allocate before a bound check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("need more bytes")]
    Short,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("{what} is {len}, over the limit of {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("unknown message type {0}")]
    UnknownMessage(u8),
}

pub(crate) fn need(buf: &impl Buf, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Short)
    } else {
        Ok(())
    }
}

pub(crate) fn get_u8(buf: &mut impl Buf) -> Result<u8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

pub(crate) fn get_u16(buf: &mut impl Buf) -> Result<u16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

pub(crate) fn get_u32(buf: &mut impl Buf) -> Result<u32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}

pub(crate) fn get_u64(buf: &mut impl Buf) -> Result<u64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

pub(crate) fn get_array<const N: usize>(buf: &mut impl Buf) -> Result<[u8; N], DecodeError> {
    need(buf, N)?;
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

/// Reads a count and checks it against `max` before anything is allocated for it.
pub(crate) fn get_count(buf: &mut impl Buf, what: &'static str, max: usize) -> Result<usize, DecodeError> {
    let len = usize::from(get_u8(buf)?);
    if len > max {
        return Err(DecodeError::TooLong { what, len, max });
    }
    Ok(len)
}

pub(crate) fn put_addr(buf: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(addr.port());
}

pub(crate) fn get_addr(buf: &mut impl Buf) -> Result<SocketAddr, DecodeError> {
    let ip = match get_u8(buf)? {
        4 => IpAddr::V4(Ipv4Addr::from(get_array::<4>(buf)?)),
        6 => IpAddr::V6(Ipv6Addr::from(get_array::<16>(buf)?)),
        _ => return Err(DecodeError::Invalid("address family")),
    };
    Ok(SocketAddr::new(ip, get_u16(buf)?))
}

pub fn put_addrs(buf: &mut impl BufMut, addrs: &[SocketAddr], max: usize) {
    let addrs = &addrs[..addrs.len().min(max)];
    buf.put_u8(addrs.len() as u8);
    addrs.iter().for_each(|a| put_addr(buf, a));
}

pub fn get_addrs(buf: &mut impl Buf, max: usize) -> Result<Vec<SocketAddr>, DecodeError> {
    let n = get_count(buf, "address list", max)?;
    (0..n).map(|_| get_addr(buf)).collect()
}
