import Foundation

/// Namespace changes on a store opened for writing (no mount): removing and cloning images.
extension Store {
    /// Makes `target` a new image with the same content as `source`: the two share every
    /// chunk (the tree is the same), so this costs one commit whatever the size. Writing
    /// either one afterwards never changes the other.
    /// `source` may name a snapshot's image as `@SNAPSHOT/path`.
    public func clone(_ rawSource: String, to rawTarget: String) throws {
        let (_, e) = try resolveImage(rawSource)
        let target = try Namespace.validate(rawTarget)
        guard let root = e.image else { throw StoreError.noSuchImage(name: rawSource) }
        var ns = namespace
        try ns.addImage(target, root: root, mode: e.mode, uid: e.uid, gid: e.gid, now: PackWriter.nowNanoseconds())
        try commit(ns)
    }

    /// Removes an image (or an empty directory) from the namespace and commits. Its chunks
    /// stay in the packs until garbage collection.
    public func remove(_ rawName: String) throws {
        let name = try Namespace.validate(rawName)
        guard let e = namespace.entries[name] else { throw StoreError.noSuchImage(name: name) }
        if e.kind == .directory && !namespace.children(of: name).isEmpty {
            throw StoreError.invalidArgument("\(name) is a directory that is not empty")
        }
        var ns = namespace
        ns.entries[name] = nil
        try commit(ns)
    }
}
