import CRados
import Foundation
import VDiskStore

/// Advisory locks on objects: the OSD class cls_lock (what RBD's exclusive lock is built on).
///
/// A lock is named (`name`), lives on one object, and is held by (client, cookie) pairs: the
/// client is the connection (`client.<instance id>`), the cookie whatever the taker chose.
/// Two cookies of one connection are two different holders. The locks are advisory: reads and
/// writes ignore them. Semantics observed on Ceph 16.2 (and checked by RadosTests):
///
/// - Taking a lock on an object that does not exist creates it, empty.
/// - Exclusive: one holder. Another pair (another cookie, or another client) gets false.
/// - Shared: any number of holders, all with the same tag; a different tag gets false.
/// - One lock name is either exclusive or shared: an exclusive request on a lock held shared
///   gets false, and a shared request on a lock held exclusive gets false.
/// - A duration bounds a hold: once it has run out the OSD drops the hold the next time the
///   lock is looked at, so another pair can take it then and ``lockers(_:name:)`` no longer
///   lists it. There is no notification: a holder learns of the expiry only by renewing.
/// - Renewing (``RadosLockRenewal``) restarts the hold's duration from the time of the renewal.
extension RadosPool {
    /// Takes the exclusive lock `name` on `object` for the pair (this connection, `cookie`).
    ///
    /// - Parameters:
    ///   - description: free text shown by `rados lock info`.
    ///   - duration: seconds the hold lasts unless renewed; 0: until unlocked or broken.
    ///   - renewal: what to do when this pair holds the lock already.
    /// - Returns: true when the pair holds the lock now; false when another pair holds it
    ///   (librados EBUSY), when it is held shared, when this pair holds it already and
    ///   `renewal` is `.acquire` (EEXIST), or when a `.renewOnly` hold had lapsed (ENOENT).
    public func lockExclusive(_ object: String, name: String, cookie: String, description: String = "",
                              duration: Double = 0, renewal: RadosLockRenewal = .acquire) throws -> Bool {
        try checkLockNames(object, name, cookie, description)
        let rc = withDuration(duration) {
            rados_lock_exclusive(io, object, name, cookie, description, $0, renewal.flags)
        }
        return try lockResult(rc, "lock \(name) (exclusive) on", object)
    }

    /// Takes the shared lock `name` on `object` for the pair (this connection, `cookie`):
    /// any number of pairs may hold it at once, provided they all give the same `tag`.
    /// Parameters and result as ``lockExclusive(_:name:cookie:description:duration:renewal:)``;
    /// false also when the lock is held with another tag or exclusively.
    public func lockShared(_ object: String, name: String, cookie: String, tag: String, description: String = "",
                           duration: Double = 0, renewal: RadosLockRenewal = .acquire) throws -> Bool {
        try checkLockNames(object, name, cookie, description)
        try checkName(tag, "lock tag")
        let rc = withDuration(duration) {
            rados_lock_shared(io, object, name, cookie, tag, description, $0, renewal.flags)
        }
        return try lockResult(rc, "lock \(name) (shared) on", object)
    }

    /// Releases this connection's hold with `cookie` on lock `name` of `object` (rados_unlock);
    /// false when it held none (never taken, expired, or broken).
    @discardableResult
    public func unlock(_ object: String, name: String, cookie: String) throws -> Bool {
        try checkLockNames(object, name, cookie, "")
        let rc = rados_unlock(io, object, name, cookie)
        if rc == -ENOENT { return false }
        guard rc == 0 else { throw failure(rc, "unlock \(name) on", object) }
        return true
    }

    /// Removes the hold of another connection, `client` (`client.<id>`, as ``lockers(_:name:)``
    /// lists it) with `cookie`, on lock `name` of `object` (rados_break_lock); false when that
    /// pair held none. The old holder is not told: it learns of it when it next renews.
    @discardableResult
    public func breakLock(_ object: String, name: String, client: String, cookie: String) throws -> Bool {
        try checkLockNames(object, name, cookie, "")
        try checkName(client, "lock client")
        let rc = rados_break_lock(io, object, name, client, cookie)
        if rc == -ENOENT { return false }
        guard rc == 0 else { throw failure(rc, "break lock \(name) of \(client) on", object) }
        return true
    }

    /// The current holders of lock `name` on `object` (rados_list_lockers); no holders when the
    /// lock is free or the object does not exist.
    public func lockers(_ object: String, name: String) throws -> RadosLockers {
        try checkLockNames(object, name, "", "")
        // librados fills in the sizes it needs and answers ERANGE when a buffer is too small.
        var sizes = [64, 256, 256, 256]
        while true {
            var tag = [CChar](repeating: 0, count: sizes[0])
            var clients = [CChar](repeating: 0, count: sizes[1])
            var cookies = [CChar](repeating: 0, count: sizes[2])
            var addresses = [CChar](repeating: 0, count: sizes[3])
            var exclusive: Int32 = 0
            var (tagLength, clientsLength, cookiesLength, addressesLength) = (sizes[0], sizes[1], sizes[2], sizes[3])
            let rc = rados_list_lockers(io, object, name, &exclusive, &tag, &tagLength, &clients, &clientsLength,
                                        &cookies, &cookiesLength, &addresses, &addressesLength)
            if rc == -ENOENT { return RadosLockers(exclusive: false, tag: "", holders: []) }
            if rc == -ERANGE {
                let needed = [tagLength, clientsLength, cookiesLength, addressesLength]
                sizes = zip(sizes, needed).map { max($0 * 2, $1) }
                continue
            }
            guard rc >= 0 else { throw failure(Int32(truncatingIfNeeded: rc), "list lockers of \(name) on", object) }
            let clientList = cStrings(clients, count: Int(rc))
            let cookieList = cStrings(cookies, count: Int(rc))
            let addressList = cStrings(addresses, count: Int(rc))
            let holders = (0..<Int(rc)).map {
                RadosLockers.Holder(client: clientList[$0], cookie: cookieList[$0], address: addressList[$0])
            }
            return RadosLockers(exclusive: exclusive != 0, tag: String(cString: tag), holders: holders)
        }
    }

    private func checkLockNames(_ object: String, _ name: String, _ cookie: String, _ description: String) throws {
        try checkName(object, "object")
        try checkName(name, "lock")
        try checkName(cookie, "lock cookie")
        try checkName(description, "lock description")
    }

    /// Calls `body` with the `struct timeval` for `seconds` (nil for 0: no expiry).
    private func withDuration(_ seconds: Double, _ body: (UnsafeMutablePointer<timeval>?) -> Int32) -> Int32 {
        guard seconds > 0 else { return body(nil) }
        let whole = seconds.rounded(.down)
        var time = timeval(tv_sec: Int(whole), tv_usec: Int(((seconds - whole) * 1_000_000).rounded()))
        return body(&time)
    }

    private func lockResult(_ rc: Int32, _ what: String, _ object: String) throws -> Bool {
        switch rc {
        case 0: return true
        case -EBUSY, -EEXIST, -ENOENT: return false
        default: throw failure(rc, what, object)
        }
    }
}

/// The first `count` NUL-terminated strings packed one after another in `buffer`.
private func cStrings(_ buffer: [CChar], count: Int) -> [String] {
    var strings: [String] = []
    var start = 0
    while strings.count < count && start < buffer.count {
        let end = buffer[start...].firstIndex(of: 0) ?? buffer.count
        strings.append(String(decoding: buffer[start..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        start = end + 1
    }
    while strings.count < count { strings.append("") }
    return strings
}
