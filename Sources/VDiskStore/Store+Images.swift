import Foundation

/// Namespace changes on a store opened for writing (no mount): removing and cloning images.
extension Store {
    /// Makes `target` a new image with the same content as `source`: the two share every
    /// chunk (the tree is the same), so this costs one commit whatever the size. Writing
    /// either one afterwards never changes the other.
    /// `source` may name a snapshot's image as `@SNAPSHOT/path`.
    public func clone(_ rawSource: String, to rawTarget: String) throws {
        let target = try Namespace.validate(rawTarget)
        try withLeases([target], purpose: "clone") { try cloneLeased(rawSource, to: target) }
    }

    private func cloneLeased(_ rawSource: String, to target: String) throws {
        let (_, e) = try resolveImage(rawSource)
        guard let root = e.image else { throw StoreError.noSuchImage(name: rawSource) }
        var ns = namespace
        try ns.addImage(target, root: root, mode: e.mode, uid: e.uid, gid: e.gid, now: PackWriter.nowNanoseconds())
        try commit(ns)
    }

    /// Removes an image (or an empty directory) from the namespace and commits. Its chunks
    /// stay in the packs until garbage collection.
    public func remove(_ rawName: String) throws {
        let name = try Namespace.validate(rawName)
        try withLeases([name], purpose: "rm") { try removeLeased(name) }
    }

    private func removeLeased(_ name: String) throws {
        guard let e = namespace.entries[name] else { throw StoreError.noSuchImage(name: name) }
        if e.kind == .directory && !namespace.children(of: name).isEmpty {
            throw StoreError.invalidArgument("\(name) is a directory that is not empty")
        }
        var ns = namespace
        ns.entries[name] = nil
        try commit(ns)
    }

    /// Runs `body` holding the write leases of `names` (a shared store: one writer per image
    /// across hosts; exit 22 naming the holder otherwise), with the namespace brought up to
    /// what other hosts committed. On a directory store the store lock suffices.
    public func withLeases<T>(_ names: [String], purpose: String, _ body: () throws -> T) throws -> T {
        guard backend.isShared else { return try body() }
        var held: [ImageLease] = []
        defer { for l in held { l.release() } }
        for n in names { held.append(try backend.acquireLease(image: n, purpose: purpose)) }
        try reloadRoot()
        return try body()
    }
}
