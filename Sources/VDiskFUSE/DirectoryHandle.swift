import VDiskStore

/// An open directory: a listing taken at `opendir` (and again on rewind), so that the offsets
/// handed to the kernel stay valid while entries are added or removed.
///
/// Entry `i` of ``entries`` has offset `i + 1`; "." and ".." are entries 0 and 1.
final class DirectoryHandle {
    let node: NodeID
    private(set) var entries: [(name: String, attributes: NodeAttributes?)] = []
    /// Whether entries were handed out since the last load (a read from offset 0 then reloads).
    var served = false

    init(node: NodeID) { self.node = node }

    /// Reads the listing from the volume (at open, and when the kernel reads from offset 0).
    func reload(from volume: Volume) throws {
        let listing = try volume.list(node)
        var all: [(name: String, attributes: NodeAttributes?)] = [(".", nil), ("..", nil)]
        all.reserveCapacity(listing.count + 2)
        for item in listing { all.append((item.name, item.attributes)) }
        entries = all
        served = false
    }

    /// The handle as the `fh` of a `fuse_file_info`; the handle is retained until ``release(_:)``.
    func retainedHandle() -> UInt64 { UInt64(UInt(bitPattern: Unmanaged.passRetained(self).toOpaque())) }

    /// The handle an `fh` refers to.
    static func from(_ fh: UInt64) -> DirectoryHandle? {
        guard let p = UnsafeRawPointer(bitPattern: UInt(fh)) else { return nil }
        return Unmanaged<DirectoryHandle>.fromOpaque(p).takeUnretainedValue()
    }

    /// Drops the reference taken by ``retainedHandle()``.
    static func release(_ fh: UInt64) {
        guard let p = UnsafeRawPointer(bitPattern: UInt(fh)) else { return }
        Unmanaged<DirectoryHandle>.fromOpaque(p).release()
    }
}
