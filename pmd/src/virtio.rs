//! Virtio constants and layouts shared by the device side (vhost-user backend) and the
//! driver side (virtio-user frontend).

/// `VIRTIO_NET_F_CSUM`.
pub const NET_F_CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_MTU`.
pub const NET_F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`.
pub const NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_STATUS`.
pub const NET_F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_F_MQ`.
pub const NET_F_MQ: u64 = 1 << 22;
/// `VIRTIO_F_NOTIFY_ON_EMPTY`.
pub const F_NOTIFY_ON_EMPTY: u64 = 1 << 24;
/// `VIRTIO_F_ANY_LAYOUT`.
pub const F_ANY_LAYOUT: u64 = 1 << 27;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_F_RING_PACKED`.
pub const F_RING_PACKED: u64 = 1 << 34;
/// `VIRTIO_F_IN_ORDER`: the device uses buffers in the order they were made available,
/// so a driver can recycle descriptors by position instead of by id.
pub const F_IN_ORDER: u64 = 1 << 35;

/// Descriptor continues via `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// Buffer holds a table of indirect descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Driver → device: do not interrupt me (without EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Device → driver: do not kick me (without EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Largest split-ring size the spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// `virtio_net_config.status`: link up.
pub const NET_S_LINK_UP: u16 = 1;

/// A split-ring descriptor as laid out in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor when `DESC_F_NEXT` is set.
    pub next: u16,
}

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;

/// Bytes of the avail ring for `size` entries (flags, idx, ring, used_event).
pub fn avail_ring_bytes(size: u16) -> u64 {
    4 + 2 * u64::from(size) + 2
}

/// Bytes of the used ring for `size` entries (flags, idx, ring, avail_event).
pub fn used_ring_bytes(size: u16) -> u64 {
    4 + 8 * u64::from(size) + 2
}

/// `vring_need_event` of the virtio spec: whether moving an index from `old` to `new`
/// crosses the other side's `event` index.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Length of the virtio-net header for the negotiated features: 12 bytes with
/// VERSION_1 or MRG_RXBUF (it carries `num_buffers`), 10 bytes otherwise.
pub fn net_hdr_len(features: u64) -> usize {
    if features & (F_VERSION_1 | NET_F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

/// Writes a virtio-net header that offers no offloads into `buf` (10 or 12 bytes);
/// `num_buffers` goes into the 12-byte form.
#[inline]
pub fn write_net_hdr(buf: &mut [u8; 12], num_buffers: u16) {
    *buf = [0; 12];
    buf[10..12].copy_from_slice(&num_buffers.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_spec_examples() {
        // The other side wants an event when the index passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(5, 9, 6));
        // Wrap-around.
        assert!(need_event(65535, 1, 65534));
    }

    #[test]
    fn header_length_follows_features() {
        assert_eq!(net_hdr_len(0), 10);
        assert_eq!(net_hdr_len(NET_F_MRG_RXBUF), 12);
        assert_eq!(net_hdr_len(F_VERSION_1), 12);
    }
}
