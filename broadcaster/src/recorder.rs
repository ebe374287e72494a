//! `--record PATH`: what is broadcast, written to a local MPEG-TS file as it goes. A failing
//! disk stops the recording, never the broadcast.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct Recorder {
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Recorder {
    /// Creates (or truncates) the file now, so a bad path fails before broadcasting.
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = File::create(path).with_context(|| format!("cannot create recording {}", path.display()))?;
        tracing::info!("recording to {}", path.display());
        Ok(Recorder {
            path: path.to_path_buf(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Appends a chunk's MPEG-TS payload (each segment opens with its tables, so the file
    /// plays from its start and across restarts of the source).
    pub fn write(&mut self, payload: &[u8]) {
        let Some(file) = &mut self.file else { return };
        if let Err(e) = file.write_all(payload) {
            tracing::error!("recording to {} stopped: {e}", self.path.display());
            self.file = None;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(file) = &mut self.file
            && let Err(e) = file.flush()
        {
            tracing::error!("recording to {}: the end was lost: {e}", self.path.display());
        }
    }
}
