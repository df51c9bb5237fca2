/// Every image and directory of a store at one commit: the unit a root (and later a
/// snapshot) points at. Paths are relative, `/`-separated, without `.` or `..`.
public struct Namespace: Equatable, Sendable {
    /// Kind and metadata of one name.
    public struct Entry: Equatable, Sendable {
        public enum Kind: UInt8, Sendable { case directory = 1, image = 2 }
        public var kind: Kind
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        /// Modification and change times, nanoseconds since the epoch.
        public var mtime: Int64
        public var ctime: Int64
        /// The image's content (images only).
        public var image: ImageRoot?

        public init(kind: Kind, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64, ctime: Int64, image: ImageRoot? = nil) {
            self.kind = kind; self.mode = mode; self.uid = uid; self.gid = gid
            self.mtime = mtime; self.ctime = ctime; self.image = image
        }
    }

    public var entries: [String: Entry]
    /// Incremented by every commit.
    public var generation: UInt64

    public init(entries: [String: Entry] = [:], generation: UInt64 = 0) {
        self.entries = entries; self.generation = generation
    }

    static let magic: [UInt8] = Array("VDNS".utf8)
    /// Bytes of the smallest entry: an empty path (u16 length), kind, mode, uid, gid, mtime, ctime.
    static let minEntrySize = 2 + 1 + 3 * 4 + 2 * 8

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + entries.count * 128)
        w.raw(Self.magic)
        w.u32(1)
        w.u64(generation)
        w.u32(UInt32(entries.count))
        for (path, e) in entries.sorted(by: { $0.key < $1.key }) {
            w.string(path)
            w.u8(e.kind.rawValue)
            w.u32(e.mode); w.u32(e.uid); w.u32(e.gid)
            w.i64(e.mtime); w.i64(e.ctime)
            if e.kind == .image {
                let img = e.image ?? .empty(size: 0, blockSize: 4096)
                w.u64(img.size); w.u32(img.blockSize); w.u8(img.depth)
                var ref = [UInt8](repeating: 0, count: ChunkRef.encodedSize)
                ref.withUnsafeMutableBytes { img.root.store(to: $0.baseAddress!) }
                w.raw(ref)
            }
        }
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> Namespace {
        var r = ByteReader(bytes, what: "namespace")
        guard try r.raw(4) == magic else { throw StoreError.corruptStore(detail: "namespace record has a bad magic") }
        let version = try r.u32()
        guard version == 1 else { throw StoreError.corruptStore(detail: "namespace format version \(version) is unknown") }
        let generation = try r.u64()
        let count = Int(try r.u32())
        var entries: [String: Entry] = [:]
        // The count is untrusted: reserve no more entries than the bytes left can hold.
        entries.reserveCapacity(min(count, r.remaining / minEntrySize))
        for _ in 0..<count {
            let path = try r.string()
            guard let kind = Entry.Kind(rawValue: try r.u8()) else { throw StoreError.corruptStore(detail: "namespace entry \(path) has an unknown kind") }
            var e = Entry(kind: kind, mode: try r.u32(), uid: try r.u32(), gid: try r.u32(), mtime: try r.i64(), ctime: try r.i64())
            if kind == .image {
                let size = try r.u64(), bs = try r.u32(), depth = try r.u8()
                let refBytes = try r.raw(ChunkRef.encodedSize)
                let root = refBytes.withUnsafeBytes { ChunkRef(loading: $0.baseAddress!) }
                guard ImageRoot.allowedBlockSizes.contains(bs), depth >= 1, depth <= ImageRoot.maxDepth else {
                    throw StoreError.corruptStore(detail: "namespace entry \(path) has a bad block size or depth")
                }
                // A tree of `depth` levels must cover the image's blocks (reads walk it by size).
                guard TreeNode.depth(forBlocks: ImageRoot.blockCount(size, bs)) <= depth else {
                    throw StoreError.corruptStore(detail: "namespace entry \(path) has a size (\(size) bytes) its tree of depth \(depth) cannot hold")
                }
                e.image = ImageRoot(size: size, blockSize: bs, depth: depth, root: root)
            }
            entries[path] = e
        }
        return Namespace(entries: entries, generation: generation)
    }

    /// Checks that `name` can name an image or directory: relative, no empty, `.` or `..`
    /// components, not under `.snapshots`, components of at most 255 bytes, at most 65535 in all.
    public static func validate(_ name: String) throws -> String {
        var parts = name.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        if name.hasPrefix("/") { throw StoreError.invalidName(name: name, reason: "it must be relative to the store") }
        parts = parts.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw StoreError.invalidName(name: name, reason: "it is empty") }
        for p in parts {
            if p == "." || p == ".." { throw StoreError.invalidName(name: name, reason: "'.' and '..' are not allowed") }
            if p.utf8.count > 255 { throw StoreError.nameTooLong(name: name) }
            if p.contains("\0") { throw StoreError.invalidName(name: name, reason: "it contains a NUL byte") }
        }
        if parts[0] == ".snapshots" { throw StoreError.invalidName(name: name, reason: ".snapshots is reserved") }
        let joined = parts.joined(separator: "/")
        // The namespace record stores a path with a 16-bit length; the kernel limits only the
        // path of each call, so deep trees reached by relative paths are fine below that.
        guard joined.utf8.count <= Int(UInt16.max) else { throw StoreError.nameTooLong(name: name) }
        return joined
    }

    /// The directories above `path`, outermost first.
    static func parents(of path: String) -> [String] {
        let parts = path.split(separator: "/")
        return (1..<max(parts.count, 1)).map { parts[0..<$0].joined(separator: "/") }
    }

    /// Names directly inside `directory` ("" for the top).
    public func children(of directory: String) -> [String] {
        let prefix = directory.isEmpty ? "" : directory + "/"
        return entries.keys.filter { $0.hasPrefix(prefix) && $0.count > prefix.count && !$0.dropFirst(prefix.count).contains("/") }.sorted()
    }

    /// Adds an image at `path`, creating missing parent directories.
    /// Throws ``StoreError/nameExists(name:)`` if the path or a parent is taken by something else.
    public mutating func addImage(_ path: String, root: ImageRoot, mode: UInt32 = 0o100644, uid: UInt32 = 0, gid: UInt32 = 0, now: Int64) throws {
        guard entries[path] == nil else { throw StoreError.nameExists(name: path) }
        for dir in Self.parents(of: path) {
            if let e = entries[dir] {
                if e.kind != .directory { throw StoreError.nameExists(name: dir) }
            }
        }
        for dir in Self.parents(of: path) where entries[dir] == nil {
            entries[dir] = Entry(kind: .directory, mode: 0o040755, uid: uid, gid: gid, mtime: now, ctime: now)
        }
        entries[path] = Entry(kind: .image, mode: mode, uid: uid, gid: gid, mtime: now, ctime: now, image: root)
    }

    /// Images at or under `path` ("" for all), sorted.
    public func images(under path: String) -> [String] {
        let prefix = path.isEmpty ? "" : path + "/"
        return entries.filter { $0.value.kind == .image && ($0.key == path || $0.key.hasPrefix(prefix)) }.keys.sorted()
    }
}
