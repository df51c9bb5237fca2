import Foundation
import Glibc

/// A stable number for a file or directory of a mounted store, kept across renames for
/// the life of the ``Volume``. The top directory is ``Volume/rootNode``.
public typealias NodeID = UInt64

/// What `stat` shows of a file or directory of a ``Volume``.
public struct NodeAttributes: Equatable, Sendable {
    public var node: NodeID
    public var isDirectory: Bool
    /// Full st_mode (type bits included).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    /// Bytes the file occupies (non-zero blocks, dirty ones included), for st_blocks.
    public var allocatedBytes: UInt64
    public var blockSize: UInt32
    /// Modification and change times, nanoseconds since the epoch.
    public var mtime: Int64
    public var ctime: Int64
    public var linkCount: UInt32
    /// Under `.snapshots`: writes fail with EROFS.
    public var readOnly: Bool

    public init(node: NodeID, isDirectory: Bool, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64, allocatedBytes: UInt64,
                blockSize: UInt32, mtime: Int64, ctime: Int64, linkCount: UInt32, readOnly: Bool) {
        self.node = node; self.isDirectory = isDirectory; self.mode = mode; self.uid = uid; self.gid = gid
        self.size = size; self.allocatedBytes = allocatedBytes; self.blockSize = blockSize
        self.mtime = mtime; self.ctime = ctime; self.linkCount = linkCount; self.readOnly = readOnly
    }
}

/// Which attributes `setAttributes` changes (nil: keep).
public struct AttributeChanges: Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    /// Nanoseconds since the epoch.
    public var mtime: Int64?
    public var ctime: Int64?
    /// A truncate by someone without CAP_FSETID: clear the set-user-ID and set-group-ID
    /// bits (``Volume/modeClearingSetID(_:)``). A change of owner or group clears them always.
    public var clearingSetID = false
    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil, mtime: Int64? = nil, ctime: Int64? = nil,
                clearingSetID: Bool = false) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.size = size; self.mtime = mtime; self.ctime = ctime
        self.clearingSetID = clearingSetID
    }
}

/// Space figures for statfs.
public struct VolumeSpace: Sendable {
    /// Bytes of the file system holding the store, and free there.
    public var totalBytes: UInt64
    public var freeBytes: UInt64
    public var availableBytes: UInt64
    public var files: UInt64
}

/// Settings of a mounted volume.
public struct VolumeOptions: Sendable {
    /// Directory of the write-back journal (default: STORE/journal).
    public var journalDirectory: String?
    /// Memory for caches: decoded tree nodes (1/8), the journal's dirty maps (at most
    /// ``Volume/dirtyMapBytes(_:)``), the buffers of I/O in flight (``Volume/ioBufferBytes``
    /// and ``requestBufferBytes``) and decompressed chunks (the rest).
    public var cacheBytes: Int = 256 << 20
    /// Buffers the layer above holds for requests in flight (FUSE: each worker thread's
    /// request and reply buffers), taken out of `cacheBytes` like the volume's own.
    public var requestBufferBytes: Int = 0
    /// Flush dirty blocks into the store after this many seconds...
    public var flushInterval: Double = 5
    /// ...or when the journal passes this many bytes.
    public var flushThreshold: Int64 = 256 << 20
    /// Writers wait (they do not fail) when the journal (every segment, the ones being
    /// flushed included) passes this many bytes, or holds more dirty blocks than this many
    /// bytes of 4 KiB blocks (bounding memory too: each takes a 24-byte slot in a dirty map,
    /// whose table is at most 3/4 full and is copied while it grows). 768 MiB is 196608
    /// blocks, which fill a 2^18-slot table exactly.
    public var journalLimit: Int64 = 768 << 20
    /// Block size of images created on the volume.
    public var newImageBlockSize: UInt32 = 4096
    /// List `.snapshots` in the top directory (it is always reachable by name).
    public var showSnapshotDirectory = false
    /// Take a snapshot this often (seconds); nil: never.
    public var snapshotInterval: Double?
    /// Which automatic snapshots to keep.
    public var retention = RetentionPolicy()
    /// A local disk cache of records (worth it when the store is remote); nil: none.
    public var diskCacheDirectory: String?
    public var diskCacheBytes: Int64 = 4 << 30
    /// Frozen blocks the flusher puts into an image's tree at a time (bounding its per-block
    /// state); only the last tree of a flush is committed. Internal: tests make it small.
    var flushWindow = 32768
    public init() {}
}
