//! Frame descriptors handed between the switching logic and the ports.
//!
//! A frame names bytes that some port owns for the duration of one burst (a
//! received guest buffer, or a pool buffer). The switch never copies a frame itself:
//! it tells the transmitting port which bytes to copy and which VLAN edit to apply
//! while copying, so a frame crosses from one guest into another with exactly one copy.

/// An edit of the 802.1Q tag applied while a frame is copied into its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VlanEdit {
    /// Copy the frame as it is.
    #[default]
    Keep,
    /// Insert an 802.1Q tag (TPID 0x8100) carrying this TCI after the source MAC.
    Push(u16),
    /// Remove the outermost 802.1Q tag (4 bytes after the source MAC).
    Pop,
}

impl VlanEdit {
    /// Length of a frame of `len` bytes after this edit.
    pub fn edited_len(self, len: usize) -> usize {
        match self {
            VlanEdit::Keep => len,
            VlanEdit::Push(_) => len + 4,
            VlanEdit::Pop => len.saturating_sub(4),
        }
    }
}
