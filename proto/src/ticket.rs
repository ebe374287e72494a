//! The stream ticket: what a viewer needs to join — the stream key, the stream's name and
//! zero or more addresses to dial — as one printable string (`shoal1` + lowercase base32).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::BufMut;
use data_encoding::BASE32_NOPAD;
use ed25519_dalek::VerifyingKey;

use crate::codec::{DecodeError, get_addrs, get_array, get_count, get_u8, put_addrs};

const PREFIX: &str = "shoal1";
const TICKET_VERSION: u8 = 1;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_TICKET_ADDRS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub stream_key: VerifyingKey,
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    #[error("a shoal ticket starts with \"{PREFIX}\"")]
    Prefix,
    #[error("the ticket is not valid base32 (a character was lost or changed when copying?)")]
    Encoding,
    #[error("the ticket is damaged: {0}")]
    Body(#[from] DecodeError),
    #[error("the ticket's stream key is not a valid ed25519 key")]
    Key,
    #[error("the ticket's stream name is not UTF-8")]
    Name,
}

impl Ticket {
    pub fn new(stream_key: VerifyingKey, name: &str, addrs: Vec<SocketAddr>) -> Self {
        let mut name = name.to_string();
        while name.len() > MAX_NAME_LEN {
            name.pop();
        }
        let mut addrs = addrs;
        addrs.truncate(MAX_TICKET_ADDRS);
        Ticket {
            stream_key,
            name,
            addrs,
        }
    }

    fn to_binary(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64 + self.name.len() + 19 * self.addrs.len());
        buf.put_u8(TICKET_VERSION);
        buf.put_slice(self.stream_key.as_bytes());
        buf.put_u8(self.name.len() as u8);
        buf.put_slice(self.name.as_bytes());
        put_addrs(&mut buf, &self.addrs, MAX_TICKET_ADDRS);
        buf
    }

    fn from_binary(mut buf: &[u8]) -> Result<Self, TicketError> {
        let version = get_u8(&mut buf)?;
        if version != TICKET_VERSION {
            return Err(DecodeError::Version(version).into());
        }
        let key = get_array::<32>(&mut buf)?;
        let stream_key = VerifyingKey::from_bytes(&key).map_err(|_| TicketError::Key)?;
        let name_len = get_count(&mut buf, "stream name", MAX_NAME_LEN)?;
        if buf.len() < name_len {
            return Err(DecodeError::Short.into());
        }
        let name = std::str::from_utf8(&buf[..name_len])
            .map_err(|_| TicketError::Name)?
            .to_string();
        buf = &buf[name_len..];
        let addrs = get_addrs(&mut buf, MAX_TICKET_ADDRS)?;
        if !buf.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes").into());
        }
        Ok(Ticket {
            stream_key,
            name,
            addrs,
        })
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}",
            BASE32_NOPAD.encode(&self.to_binary()).to_ascii_lowercase()
        )
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, TicketError> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let binary = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        Ticket::from_binary(&binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn ticket(name: &str, addrs: Vec<SocketAddr>) -> Ticket {
        Ticket::new(SigningKey::from_bytes(&[3; 32]).verifying_key(), name, addrs)
    }

    proptest! {
        #[test]
        fn round_trips(name in "\\PC{0,20}", ports in proptest::collection::vec(any::<u16>(), 0..MAX_TICKET_ADDRS)) {
            let addrs = ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
            let t = ticket(&name, addrs);
            let text = t.to_string();
            prop_assert!(text.chars().all(|c| c.is_ascii_alphanumeric()));
            prop_assert_eq!(text.parse::<Ticket>().unwrap(), t);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(s in "\\PC{0,120}") {
            let _ = s.parse::<Ticket>();
            let _ = format!("shoal1{s}").parse::<Ticket>();
        }
    }

    #[test]
    fn malformed_tickets_say_why() {
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::Prefix));
        assert_eq!("shoal1!!!".parse::<Ticket>(), Err(TicketError::Encoding));
        let text = ticket("show", vec!["[::1]:4000".parse().unwrap()]).to_string();
        assert!(matches!(
            text[..text.len() - 8].parse::<Ticket>(),
            Err(TicketError::Body(_) | TicketError::Encoding)
        ));
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        let t = ticket(&"é".repeat(50), vec![]);
        assert!(t.name.len() <= MAX_NAME_LEN);
        assert_eq!(t.to_string().parse::<Ticket>().unwrap(), t);
    }
}
