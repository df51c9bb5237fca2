import Foundation
import Glibc
import Synchronization

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
    public var mtime: Int64?
    public var ctime: Int64?
    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil, mtime: Int64? = nil, ctime: Int64? = nil) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.size = size; self.mtime = mtime; self.ctime = ctime
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
    /// Bytes of decompressed chunks kept in memory.
    public var cacheBytes: Int = 256 << 20
    /// Flush dirty blocks into the store after this many seconds...
    public var flushInterval: Double = 5
    /// ...or when the journal passes this many bytes.
    public var flushThreshold: Int64 = 256 << 20
    /// Writers wait (they do not fail) when the journal passes this many bytes.
    public var journalLimit: Int64 = 1 << 30
    /// Block size of images created on the volume.
    public var newImageBlockSize: UInt32 = 4096
    public init() {}
}

/// The live, writable view of a store that a mount serves: images as files in directories,
/// read and written by byte range. No FUSE here: the driver maps its requests onto this.
///
/// Writes go to a write-back journal on local disk and are acknowledged once appended;
/// ``synchronize(_:dataOnly:)`` makes them durable. A background flusher moves dirty blocks
/// into the store (hash, compress, pack, tree, commit). Metadata changes (create, mkdir,
/// rename, unlink, chmod, truncate) are committed to the store before they return.
/// After a crash, the next `Volume` on the store replays the journal.
///
/// Thread-safe: every method may be called from any FUSE worker thread.
public final class Volume: @unchecked Sendable {
    /// The top directory's node.
    public static let rootNode: NodeID = 1

    public let store: Store
    public let options: VolumeOptions

    /// Opens the volume over a store opened read-write, replaying a journal left by a crash.
    public init(store: Store, options: VolumeOptions = VolumeOptions()) throws {
        self.store = store
        self.options = options
        throw StoreError.io(errno: ENOSYS, context: "Volume is not implemented yet")
    }

    /// Finds `name` in directory `parent`.
    public func lookup(parent: NodeID, name: String) throws -> NodeAttributes { throw StoreError.io(errno: ENOSYS, context: "lookup") }
    /// The attributes of `node`.
    public func attributes(_ node: NodeID) throws -> NodeAttributes { throw StoreError.io(errno: ENOSYS, context: "getattr") }
    /// Changes mode, owner, size (truncate/extend) or times; returns the new attributes.
    public func setAttributes(_ node: NodeID, _ changes: AttributeChanges) throws -> NodeAttributes { throw StoreError.io(errno: ENOSYS, context: "setattr") }
    /// The entries of a directory (without . and ..), sorted by name.
    public func list(_ directory: NodeID) throws -> [(name: String, attributes: NodeAttributes)] { throw StoreError.io(errno: ENOSYS, context: "readdir") }
    /// Creates a directory.
    public func makeDirectory(parent: NodeID, name: String, mode: UInt32, uid: UInt32, gid: UInt32) throws -> NodeAttributes { throw StoreError.io(errno: ENOSYS, context: "mkdir") }
    /// Creates an empty image (size 0).
    public func createImage(parent: NodeID, name: String, mode: UInt32, uid: UInt32, gid: UInt32) throws -> NodeAttributes { throw StoreError.io(errno: ENOSYS, context: "create") }
    /// Removes an empty directory (ENOTEMPTY otherwise).
    public func removeDirectory(parent: NodeID, name: String) throws { throw StoreError.io(errno: ENOSYS, context: "rmdir") }
    /// Removes an image. Its node stays readable and writable until ``forget(_:)``.
    public func unlink(parent: NodeID, name: String) throws { throw StoreError.io(errno: ENOSYS, context: "unlink") }
    /// Renames; `noReplace` fails with EEXIST when the target exists, `exchange` swaps the two.
    public func rename(parent: NodeID, name: String, newParent: NodeID, newName: String, noReplace: Bool, exchange: Bool) throws { throw StoreError.io(errno: ENOSYS, context: "rename") }
    /// Reads up to `buffer.count` bytes at `offset`; fewer at end of file.
    public func read(_ node: NodeID, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int { throw StoreError.io(errno: ENOSYS, context: "read") }
    /// Writes `data` at `offset`, extending the file if needed; returns the bytes written.
    public func write(_ node: NodeID, offset: UInt64, data: UnsafeRawBufferPointer) throws -> Int { throw StoreError.io(errno: ENOSYS, context: "write") }
    /// Makes every acknowledged write (of `node`, or all when nil) durable before returning.
    public func synchronize(_ node: NodeID?, dataOnly: Bool) throws { throw StoreError.io(errno: ENOSYS, context: "fsync") }
    /// Turns a byte range into zeros (whole blocks become zero blocks and free their chunks);
    /// the size does not change. FALLOC_FL_PUNCH_HOLE.
    public func punchHole(_ node: NodeID, offset: UInt64, length: UInt64) throws { throw StoreError.io(errno: ENOSYS, context: "fallocate") }
    /// Zeros a range, extending the size unless `keepSize`. FALLOC_FL_ZERO_RANGE.
    public func zeroRange(_ node: NodeID, offset: UInt64, length: UInt64, keepSize: Bool) throws { throw StoreError.io(errno: ENOSYS, context: "fallocate") }
    /// posix_fallocate: extends the size to cover the range unless `keepSize` (no space is reserved).
    public func allocate(_ node: NodeID, offset: UInt64, length: UInt64, keepSize: Bool) throws { throw StoreError.io(errno: ENOSYS, context: "fallocate") }
    /// SEEK_DATA (`data` true) or SEEK_HOLE from `offset`; throws ENXIO past the end.
    public func seek(_ node: NodeID, offset: UInt64, data: Bool) throws -> UInt64 { throw StoreError.io(errno: ENOSYS, context: "lseek") }
    /// copy_file_range: block-aligned parts share chunks instead of copying bytes.
    public func copyRange(from source: NodeID, offset sourceOffset: UInt64, to target: NodeID, offset targetOffset: UInt64, length: UInt64) throws -> UInt64 { throw StoreError.io(errno: ENOSYS, context: "copy_file_range") }
    /// Names of the read-only informational extended attributes (`user.vdiskfs.*`).
    public func extendedAttributeNames(_ node: NodeID) throws -> [String] { [] }
    /// The value of an informational extended attribute, nil when it has none of that name.
    public func extendedAttribute(_ node: NodeID, name: String) throws -> [UInt8]? { nil }
    /// statfs figures.
    public func space() throws -> VolumeSpace { throw StoreError.io(errno: ENOSYS, context: "statfs") }
    /// The kernel no longer knows `node`: an unlinked node's data can go.
    public func forget(_ node: NodeID) {}
    /// Moves every dirty block into the store and commits.
    public func flush() throws { throw StoreError.io(errno: ENOSYS, context: "flush") }
    /// Flushes and stops the flusher; the volume is unusable afterwards.
    public func close() throws { throw StoreError.io(errno: ENOSYS, context: "close") }
}
