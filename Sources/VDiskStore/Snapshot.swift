import Foundation

/// A read-only version of the whole namespace, kept by name: every image as it was at one
/// commit. Its chunks are shared with the live images and with other snapshots.
public struct Snapshot: Equatable, Sendable, Codable {
    public var name: String
    /// When it was taken, nanoseconds since the epoch.
    public var created: Int64
    /// The namespace record it keeps.
    public var namespace: ChunkRef

    enum CodingKeys: String, CodingKey { case name, created }

    public init(name: String, created: Int64, namespace: ChunkRef) {
        self.name = name; self.created = created; self.namespace = namespace
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        created = try c.decode(Int64.self, forKey: .created)
        namespace = .zero
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(created, forKey: .created)
    }

    /// Now, in nanoseconds since the epoch (the clock snapshots are stamped with).
    public static func now() -> Int64 { PackWriter.nowNanoseconds() }

    /// The default name: the UTC time, to the second.
    public static func timestampName(_ nanoseconds: Int64) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f.string(from: Date(timeIntervalSince1970: Double(nanoseconds) / 1e9))
    }

    /// Checks a snapshot name: one path component, not `.` or `..`, at most 255 bytes.
    public static func validate(_ name: String) throws -> String {
        guard !name.isEmpty, !name.contains("/"), !name.contains("\0"), name != ".", name != "..", name.utf8.count <= 255 else {
            throw StoreError.invalidName(name: name, reason: "a snapshot name is one component, without '/'")
        }
        return name
    }

    static let magic: [UInt8] = Array("VDSS".utf8)

    /// The snapshot table record: `"VDSS" | version u32 | count u32 | (name, created i64, ChunkRef)*`.
    static func encodeTable(_ snapshots: [Snapshot]) -> [UInt8] {
        var w = ByteWriter(capacity: 16 + snapshots.count * 100)
        w.raw(magic)
        w.u32(1)
        w.u32(UInt32(snapshots.count))
        for s in snapshots {
            w.string(s.name)
            w.i64(s.created)
            var ref = [UInt8](repeating: 0, count: ChunkRef.encodedSize)
            ref.withUnsafeMutableBytes { s.namespace.store(to: $0.baseAddress!) }
            w.raw(ref)
        }
        return w.bytes
    }

    static func decodeTable(_ bytes: [UInt8]) throws -> [Snapshot] {
        var r = ByteReader(bytes, what: "snapshot table")
        guard try r.raw(4) == magic, try r.u32() == 1 else { throw StoreError.corruptStore(detail: "the snapshot table has a bad header") }
        let count = Int(try r.u32())
        var out: [Snapshot] = []
        for _ in 0..<count {
            let name = try r.string(), created = try r.i64()
            let ref = try r.raw(ChunkRef.encodedSize).withUnsafeBytes { ChunkRef(loading: $0.baseAddress!) }
            out.append(Snapshot(name: name, created: created, namespace: ref))
        }
        return out
    }
}

extension Store {
    /// The store's snapshots, oldest first.
    public func snapshots() throws -> [Snapshot] {
        if snapshotTableRef.isZero { return [] }
        return try Snapshot.decodeTable(try readRecord(snapshotTableRef, kind: .snapshotTable))
    }

    /// Keeps the committed namespace as a snapshot named `label` (default: the UTC time).
    @discardableResult
    public func createSnapshot(label: String? = nil) throws -> Snapshot {
        let now = PackWriter.nowNanoseconds()
        let name = try Snapshot.validate(label ?? Snapshot.timestampName(now))
        var all = try snapshots()
        guard !all.contains(where: { $0.name == name }) else { throw StoreError.nameExists(name: "snapshot " + name) }
        let snap = Snapshot(name: name, created: now, namespace: namespaceRef)
        all.append(snap)
        try commit(namespace, snapshots: all)
        return snap
    }

    /// Deletes a snapshot; the chunks only it kept are reclaimed by gc.
    public func deleteSnapshot(_ name: String) throws {
        var all = try snapshots()
        guard let i = all.firstIndex(where: { $0.name == name }) else { throw StoreError.noSuchImage(name: "snapshot " + name) }
        all.remove(at: i)
        try commit(namespace, snapshots: all)
    }

    /// The namespace a snapshot keeps.
    public func namespace(ofSnapshot name: String) throws -> Namespace {
        guard let s = try snapshots().first(where: { $0.name == name }) else { throw StoreError.noSuchImage(name: "snapshot " + name) }
        return try Namespace.decode(try readRecord(s.namespace, kind: .namespace))
    }

    /// Resolves an image reference: `path` (live) or `@SNAPSHOT/path`.
    public func resolveImage(_ reference: String) throws -> (name: String, entry: Namespace.Entry) {
        if reference.hasPrefix("@") {
            let rest = reference.dropFirst()
            guard let slash = rest.firstIndex(of: "/") else { throw StoreError.invalidName(name: reference, reason: "use @SNAPSHOT/path") }
            let snap = String(rest[..<slash])
            let path = try Namespace.validate(String(rest[rest.index(after: slash)...]))
            guard let e = try namespace(ofSnapshot: snap).entries[path], e.kind == .image else { throw StoreError.noSuchImage(name: reference) }
            return (path, e)
        }
        let path = try Namespace.validate(reference)
        guard let e = namespace.entries[path], e.kind == .image else { throw StoreError.noSuchImage(name: path) }
        return (path, e)
    }

    /// Restores `image`'s content from a snapshot (the live image must exist or is created).
    public func rollback(_ image: String, to snapshot: String) throws {
        let path = try Namespace.validate(image)
        try withLeases([path], purpose: "rollback") { try rollbackLeased(path, to: snapshot) }
    }

    private func rollbackLeased(_ path: String, to snapshot: String) throws {
        guard let old = try namespace(ofSnapshot: snapshot).entries[path], old.kind == .image, let root = old.image else {
            throw StoreError.noSuchImage(name: "@\(snapshot)/\(path)")
        }
        var ns = namespace
        let now = PackWriter.nowNanoseconds()
        if var e = ns.entries[path] {
            guard e.kind == .image else { throw StoreError.nameExists(name: path) }
            e.image = root
            e.mtime = now; e.ctime = now
            ns.entries[path] = e
        } else {
            try ns.addImage(path, root: root, mode: old.mode, uid: old.uid, gid: old.gid, now: now)
        }
        try commit(ns)
    }

    /// One version of an image in the history: the snapshot (nil: the live image) and the
    /// bytes that differ from the previous version listed.
    public struct ImageVersion: Codable, Sendable {
        public var snapshot: String?
        public var created: Int64
        public var size: UInt64
        public var root: String
        public var changedBytes: UInt64
        enum CodingKeys: String, CodingKey { case snapshot, created, size, root, changedBytes = "changed_bytes" }
    }

    /// The versions of `image` across snapshots (oldest first) and the live one, with the
    /// bytes changed between consecutive versions (found by comparing trees, skipping
    /// subtrees whose hashes match).
    public func history(of image: String) throws -> [ImageVersion] {
        let path = try Namespace.validate(image)
        var points: [(String?, Int64, ImageRoot)] = []
        for s in try snapshots() {
            if let r = try namespace(ofSnapshot: s.name).entries[path]?.image { points.append((s.name, s.created, r)) }
        }
        if let r = namespace.entries[path]?.image { points.append((nil, namespace.entries[path]!.mtime, r)) }
        guard !points.isEmpty else { throw StoreError.noSuchImage(name: path) }
        var out: [ImageVersion] = []
        var previous: ImageRoot?
        for (name, created, root) in points {
            let changed = try previous.map { try changedBlocks($0, root) * UInt64(root.blockSize) } ?? root.size
            out.append(ImageVersion(snapshot: name, created: created, size: root.size, root: root.root.hash.hex, changedBytes: changed))
            previous = root
        }
        return out
    }

    /// Blocks that differ between two versions of an image.
    func changedBlocks(_ a: ImageRoot, _ b: ImageRoot) throws -> UInt64 {
        if a.blockSize != b.blockSize { return max(a.blockCount, b.blockCount) }
        let blocks = max(a.blockCount, b.blockCount)
        if a.depth == b.depth && a.root.hash == b.root.hash && a.size == b.size { return 0 }
        // Compare leaf by leaf, skipping equal leaves by hash.
        var changed: UInt64 = 0
        var first: UInt64 = 0
        let fan = UInt64(TreeNode.fanOut)
        while first < blocks {
            let n = Int(min(fan, blocks - first))
            let ra = try blockRefs(a, from: first, count: n), rb = try blockRefs(b, from: first, count: n)
            for i in 0..<n where ra[i].hash != rb[i].hash { changed += 1 }
            first += fan
        }
        return changed
    }
}
