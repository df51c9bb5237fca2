import CRados
import CephTestSupport
import Foundation
import VDiskStore
import XCTest
@testable import VDiskRados

/// RadosCluster and RadosPool against a real (throw-away) Ceph cluster: see CephTestCluster.
/// Each test works in a namespace of its own in the cluster's pool.
final class RadosClientTests: XCTestCase {
    /// A new connection to the test cluster.
    private func connect() throws -> RadosCluster {
        try RadosCluster(configFile: try CephTestCluster.configFile())
    }

    /// The test cluster's pool, in a namespace no other test uses.
    private func freshPool(_ cluster: RadosCluster? = nil) throws -> RadosPool {
        let cluster = try cluster ?? connect()
        return try cluster.pool(CephTestCluster.pool, namespace: "\(name)-\(UUID().uuidString)")
    }

    private func bytes(_ count: Int, seed: UInt8 = 1) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7) }
    }

    private func read(_ pool: RadosPool, _ object: String, at offset: UInt64, count: Int) throws -> [UInt8]? {
        var buffer = [UInt8](repeating: 0xEE, count: count)
        let n = try buffer.withUnsafeMutableBytes { try pool.read(object, at: offset, into: $0) }
        return n.map { Array(buffer.prefix($0)) }
    }

    /// Polls `condition` every 50 ms until it holds (returns the time it took) or `seconds` pass.
    private func waitUntil(seconds: Double, _ condition: () throws -> Bool) throws -> Duration? {
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < .seconds(seconds) {
            if try condition() { return clock.now - start }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return nil
    }

    // MARK: Objects

    func testWriteReadAndVersions() throws {
        let pool = try freshPool()
        let data = bytes(10_000)
        try pool.writeFull("disk/pack.000001", data)
        XCTAssertEqual(try pool.size("disk/pack.000001"), 10_000)
        XCTAssertEqual(try read(pool, "disk/pack.000001", at: 0, count: 10_000), data)
        XCTAssertEqual(try read(pool, "disk/pack.000001", at: 9_990, count: 100), Array(data[9_990...]), "short read at the end")
        XCTAssertEqual(try read(pool, "disk/pack.000001", at: 20_000, count: 100), [], "past the end")

        let first = try XCTUnwrap(pool.readAll("disk/pack.000001"))
        XCTAssertEqual(first.bytes, data)
        XCTAssertGreaterThan(first.version, 0)

        // A write at an offset past the end leaves zeros in the gap, and moves the version on.
        try pool.write("disk/pack.000001", [1, 2, 3], at: 12_000)
        let second = try XCTUnwrap(pool.readAll("disk/pack.000001"))
        XCTAssertEqual(second.bytes.count, 12_003)
        XCTAssertEqual(Array(second.bytes[10_000..<12_000]), [UInt8](repeating: 0, count: 2_000))
        XCTAssertEqual(Array(second.bytes[12_000...]), [1, 2, 3])
        XCTAssertGreaterThan(second.version, first.version)

        // An object larger than the size hint: a second round trip, same result.
        let big = bytes(300_000, seed: 9)
        try pool.writeFull("big", big)
        XCTAssertEqual(try pool.readAll("big", sizeHint: 1000)?.bytes, big)
        XCTAssertEqual(try pool.readAll("big")?.bytes, big)
        XCTAssertEqual(try pool.readAll("big", sizeHint: 300_000)?.bytes, big)

        // Empty objects and empty writes.
        try pool.writeFull("empty", [UInt8]())
        XCTAssertEqual(try pool.size("empty"), 0)
        XCTAssertEqual(try pool.readAll("empty")?.bytes, [])
        XCTAssertEqual(try read(pool, "empty", at: 0, count: 0), [])

        XCTAssertTrue(try pool.remove("big"))
        XCTAssertNil(try pool.size("big"))
    }

    func testMissingObjects() throws {
        let pool = try freshPool()
        XCTAssertNil(try read(pool, "nothing", at: 0, count: 10))
        XCTAssertNil(try read(pool, "nothing", at: 0, count: 0))
        XCTAssertNil(try pool.readAll("nothing"))
        XCTAssertNil(try pool.size("nothing"))
        XCTAssertFalse(try pool.remove("nothing"))
        XCTAssertNil(try pool.attribute("a", of: "nothing"))
        XCTAssertNoThrow(try pool.removeAttribute("a", of: "nothing"))
        XCTAssertNil(try pool.replace("nothing", with: [1], ifVersion: 1))
        XCTAssertEqual(try pool.lockers("nothing", name: "lock").holders, [])
        XCTAssertFalse(try pool.unlock("nothing", name: "lock", cookie: "c"))
        XCTAssertEqual(try pool.objects(), [], "none of these calls created an object")
        XCTAssertThrowsError(try pool.size("bad\0name")) { error in
            guard case StoreError.invalidArgument = error else { return XCTFail("\(error)") }
        }
    }

    func testCreateExclusive() throws {
        let pool = try freshPool()
        let version = try XCTUnwrap(pool.createExclusive("root", [1, 2, 3]))
        XCTAssertNil(try pool.createExclusive("root", [9, 9]), "the second create finds the object there")
        let root = try XCTUnwrap(pool.readAll("root"))
        XCTAssertEqual(root.bytes, [1, 2, 3], "unchanged by the refused create")
        XCTAssertEqual(root.version, version, "createExclusive returns the version readAll sees")
    }

    func testReplaceIfVersion() throws {
        let pool = try freshPool()
        try pool.writeFull("root", [1])
        let v1 = try XCTUnwrap(pool.readAll("root")).version
        let v2 = try XCTUnwrap(pool.replace("root", with: [2, 2], ifVersion: v1))
        XCTAssertGreaterThan(v2, v1)
        XCTAssertEqual(try pool.readAll("root")?.version, v2)

        // Stale: someone replaced it since v1.
        XCTAssertNil(try pool.replace("root", with: [3, 3, 3], ifVersion: v1))
        // A version from the future.
        XCTAssertNil(try pool.replace("root", with: [4], ifVersion: v2 + 100))
        let now = try XCTUnwrap(pool.readAll("root"))
        XCTAssertEqual(now.bytes, [2, 2], "refused replaces leave the object as it was")
        XCTAssertEqual(now.version, v2)
        XCTAssertNotNil(try pool.replace("root", with: [5], ifVersion: v2))
        XCTAssertThrowsError(try pool.replace("root", with: [6], ifVersion: 0), "no object has version 0")
    }

    /// What librados answers for a failed version assertion, under RadosPool.replace's nil.
    func testAssertVersionErrnos() throws {
        let pool = try freshPool()
        try pool.writeFull("root", [0])
        try pool.writeFull("root", [1])   // version >= 2: asserting version 0 is EINVAL
        let version = try XCTUnwrap(pool.readAll("root")).version
        func assertVersion(_ asserted: UInt64) -> Int32 {
            let op = rados_create_write_op()
            defer { rados_release_write_op(op) }
            rados_write_op_assert_version(op, asserted)
            rados_write_op_write_full(op, "x", 1)
            return rados_write_op_operate(op, pool.io, "root", nil, 0)
        }
        XCTAssertEqual(assertVersion(version - 1), -ERANGE, "the object is newer than asserted")
        XCTAssertEqual(assertVersion(version + 1), -EOVERFLOW, "the object is older than asserted")
        XCTAssertEqual(try pool.readAll("root")?.bytes, [1])
    }

    /// Compare-and-set from many threads on one pool: every successful replace is counted once.
    func testConcurrentReplaceCountsEveryIncrement() throws {
        let pool = try freshPool()
        try pool.writeFull("counter", withUnsafeBytes(of: UInt64(0)) { Array($0) })
        let threads = 4, increments = 25
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<increments {
                while true {
                    guard let (bytes, version) = try? pool.readAll("counter") else { return XCTFail("read") }
                    let value = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } + 1
                    let next = withUnsafeBytes(of: value) { Array($0) }
                    if (try? pool.replace("counter", with: next, ifVersion: version)) != nil { break }
                }
            }
        }
        let final = try XCTUnwrap(pool.readAll("counter")).bytes
        XCTAssertEqual(final.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }, UInt64(threads * increments))
    }

    func testTruncate() throws {
        let pool = try freshPool()
        try pool.writeFull("pack", bytes(1000))
        try pool.truncate("pack", to: 100)
        XCTAssertEqual(try pool.readAll("pack")?.bytes, Array(bytes(1000).prefix(100)))
        try pool.truncate("pack", to: 200)
        XCTAssertEqual(try pool.readAll("pack")?.bytes, Array(bytes(1000).prefix(100)) + [UInt8](repeating: 0, count: 100))
        try pool.truncate("pack", to: 0)
        XCTAssertEqual(try pool.size("pack"), 0)
        try pool.truncate("missing", to: 10)
        XCTAssertNil(try pool.size("missing"), "truncate creates no object")
    }

    func testListingByPrefixAndNamespaceIsolation() throws {
        let cluster = try connect()
        let a = try freshPool(cluster), b = try freshPool(cluster)
        let names = ["packs/000001", "packs/000002", "packs/sub/dir/x", "root", "p", "packs", "ünïcode packs/ö"]
        for name in names { try a.writeFull(name, [1]) }
        try b.writeFull("packs/999999", [2])

        XCTAssertEqual(try a.objects(), names.sorted())
        XCTAssertEqual(try a.objects(withPrefix: "packs/"), ["packs/000001", "packs/000002", "packs/sub/dir/x"])
        XCTAssertEqual(try a.objects(withPrefix: "zzz"), [])
        XCTAssertEqual(try b.objects(), ["packs/999999"])
        XCTAssertNil(try b.size("root"), "another namespace does not see a's objects")
        XCTAssertEqual(try a.readAll("packs/sub/dir/x")?.bytes, [1])

        let defaultNamespace = try cluster.pool(CephTestCluster.pool)
        XCTAssertEqual(defaultNamespace.namespace, "")
        XCTAssertFalse(try defaultNamespace.objects().contains("root"))
    }

    func testAttributes() throws {
        let pool = try freshPool()
        try pool.writeFull("pack", [1])
        XCTAssertNil(try pool.attribute("sealed", of: "pack"))
        try pool.setAttribute("sealed", of: "pack", to: Array("yes".utf8))
        XCTAssertEqual(try pool.attribute("sealed", of: "pack"), Array("yes".utf8))
        let big = bytes(100_000)   // larger than the first buffer: librados' ERANGE, retried
        try pool.setAttribute("summary", of: "pack", to: big)
        XCTAssertEqual(try pool.attribute("summary", of: "pack"), big)
        try pool.setAttribute("empty", of: "pack", to: [UInt8]())
        XCTAssertEqual(try pool.attribute("empty", of: "pack"), [])
        try pool.removeAttribute("sealed", of: "pack")
        try pool.removeAttribute("sealed", of: "pack")   // not there: no error
        XCTAssertNil(try pool.attribute("sealed", of: "pack"))
        XCTAssertEqual(try pool.readAll("pack")?.bytes, [1], "attributes are not content")
        try pool.setAttribute("a", of: "new", to: [1])
        XCTAssertEqual(try pool.size("new"), 0, "setting an attribute creates the object")
    }

    // MARK: Many requests in flight

    func testBatchWritesThenReadMany() throws {
        let pool = try freshPool()
        let batch = pool.writeBatch()
        // 16 objects x 4 pieces of 16 KiB each, written out of order: 64 writes in flight.
        let piece = 16 * 1024
        var expected: [String: [UInt8]] = [:]
        for index in 0..<16 { expected["obj/\(index)"] = [UInt8](repeating: 0, count: 4 * piece) }
        for part in [2, 0, 3, 1] {
            for index in 0..<16 {
                let data = bytes(piece, seed: UInt8(index * 4 + part))
                batch.write("obj/\(index)", data, at: UInt64(part * piece))
                expected["obj/\(index)"]!.replaceSubrange(part * piece..<(part + 1) * piece, with: data)
            }
        }
        XCTAssertEqual(batch.count, 64)
        try batch.wait()
        XCTAssertEqual(batch.count, 0)

        // Read back, each object in two halves, plus a missing object and a read past the end.
        let buffers = (0..<34).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * piece, alignment: 16) }
        defer { buffers.forEach { $0.deallocate() } }
        var requests: [RadosPool.ReadRequest] = []
        for index in 0..<16 {
            for half in 0..<2 {
                requests.append(.init(object: "obj/\(index)", offset: UInt64(half * 2 * piece), buffer: buffers[index * 2 + half]))
            }
        }
        requests.append(.init(object: "missing", offset: 0, buffer: buffers[32]))
        requests.append(.init(object: "obj/0", offset: UInt64(4 * piece - 10), buffer: buffers[33]))
        let counts = try pool.readMany(requests)
        XCTAssertEqual(counts.count, 34)
        for index in 0..<16 {
            var object: [UInt8] = []
            for half in 0..<2 {
                XCTAssertEqual(counts[index * 2 + half], 2 * piece)
                object += Array(UnsafeRawBufferPointer(buffers[index * 2 + half]))
            }
            XCTAssertEqual(object, expected["obj/\(index)"], "obj/\(index)")
        }
        XCTAssertNil(counts[32], "missing object")
        XCTAssertEqual(counts[33], 10, "short read at the end")

        // writeFull in a batch, and the batch is reusable.
        batch.writeFull("obj/0", [7, 7])
        try batch.wait()
        XCTAssertEqual(try pool.readAll("obj/0")?.bytes, [7, 7])
    }

    func testBatchReportsTheFirstFailure() throws {
        let pool = try freshPool()
        let batch = pool.writeBatch()
        batch.write("fine", [1], at: 0)
        batch.write("too/far", [1], at: 1 << 40)       // past osd_max_object_size: the OSD refuses
        batch.write("fine", [2], at: 1)
        XCTAssertThrowsError(try batch.wait()) { error in
            guard case StoreError.io(let errno, let context) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(errno, EFBIG)
            XCTAssertEqual(context, "rados write too/far")
        }
        XCTAssertEqual(try pool.readAll("fine")?.bytes, [1, 2], "the other writes were done")
        batch.write("bad\0name", [1], at: 0)
        XCTAssertThrowsError(try batch.wait())
        XCTAssertNoThrow(try batch.wait(), "a failure is reported once")
    }

    // MARK: Locks

    func testExclusiveLockRefusesOtherHolders() throws {
        let cluster = try connect(), other = try connect()
        XCTAssertNotEqual(cluster.instanceID, other.instanceID)
        let pool = try freshPool(cluster)
        let otherPool = try other.pool(CephTestCluster.pool, namespace: pool.namespace)

        XCTAssertTrue(try pool.lockExclusive("store", name: "write", cookie: "one", description: "test"))
        XCTAssertEqual(try pool.size("store"), 0, "locking creates the object")
        XCTAssertFalse(try pool.lockExclusive("store", name: "write", cookie: "two"), "another cookie of the same client")
        XCTAssertFalse(try otherPool.lockExclusive("store", name: "write", cookie: "one"), "the same cookie of another client")
        XCTAssertFalse(try pool.lockExclusive("store", name: "write", cookie: "one"), "held already (EEXIST)")
        XCTAssertTrue(try pool.lockExclusive("store", name: "write", cookie: "one", renewal: .acquireOrRenew))
        XCTAssertTrue(try pool.lockExclusive("store", name: "write", cookie: "one", renewal: .renewOnly))
        XCTAssertTrue(try otherPool.lockExclusive("store", name: "other lock", cookie: "one"), "locks of other names are independent")

        let lockers = try otherPool.lockers("store", name: "write")
        XCTAssertTrue(lockers.exclusive)
        XCTAssertEqual(lockers.tag, "")
        XCTAssertEqual(lockers.holders.map(\.client), ["client.\(cluster.instanceID)"])
        XCTAssertEqual(lockers.holders.map(\.cookie), ["one"])
        XCTAssertTrue(lockers.holders[0].address.contains("127.0.0.1:"), lockers.holders[0].address)

        XCTAssertFalse(try otherPool.unlock("store", name: "write", cookie: "one"), "not the holder")
        XCTAssertTrue(try pool.unlock("store", name: "write", cookie: "one"))
        XCTAssertFalse(try pool.unlock("store", name: "write", cookie: "one"))
        XCTAssertEqual(try pool.lockers("store", name: "write").holders, [])
        XCTAssertFalse(try pool.lockExclusive("store", name: "write", cookie: "one", renewal: .renewOnly), "nothing to renew")
        XCTAssertTrue(try otherPool.lockExclusive("store", name: "write", cookie: "two"))
    }

    func testExclusiveLockExpires() throws {
        let cluster = try connect(), other = try connect()
        let pool = try freshPool(cluster)
        let otherPool = try other.pool(CephTestCluster.pool, namespace: pool.namespace)
        XCTAssertTrue(try pool.lockExclusive("store", name: "lease", cookie: "a", duration: 1.5))
        XCTAssertFalse(try otherPool.lockExclusive("store", name: "lease", cookie: "b", duration: 1.5))

        // Nobody touches the lock until it has run out; then it is free to take.
        let waited = try XCTUnwrap(waitUntil(seconds: 10) { try otherPool.lockers("store", name: "lease").holders.isEmpty },
                                   "the hold never expired")
        XCTAssertGreaterThan(waited, .milliseconds(1200))
        XCTAssertTrue(try otherPool.lockExclusive("store", name: "lease", cookie: "b", duration: 1.5))
        XCTAssertFalse(try pool.lockExclusive("store", name: "lease", cookie: "a", renewal: .renewOnly), "a's hold has lapsed")
        XCTAssertFalse(try pool.unlock("store", name: "lease", cookie: "a"))
    }

    func testRenewExtendsTheHold() throws {
        let cluster = try connect(), other = try connect()
        let pool = try freshPool(cluster)
        let otherPool = try other.pool(CephTestCluster.pool, namespace: pool.namespace)
        let clock = ContinuousClock()
        let start = clock.now
        XCTAssertTrue(try pool.lockExclusive("store", name: "lease", cookie: "a", duration: 1))
        // Renewed at once for 3 s: the 1 s of the first hold no longer counts.
        XCTAssertTrue(try pool.lockExclusive("store", name: "lease", cookie: "a", duration: 3, renewal: .renewOnly))
        let renewed = clock.now
        let taken = try XCTUnwrap(waitUntil(seconds: 15) {
            try otherPool.lockExclusive("store", name: "lease", cookie: "b", duration: 10)
        }, "the renewed hold never expired")
        XCTAssertGreaterThan(clock.now - renewed, .milliseconds(2700), "taken after \(taken), before the renewed hold ran out")
        XCTAssertGreaterThan(clock.now - start, .milliseconds(2700))

        // acquireOrRenew after the expiry: with b holding it now, it is refused.
        XCTAssertFalse(try pool.lockExclusive("store", name: "lease", cookie: "a", duration: 1, renewal: .acquireOrRenew))
    }

    func testSharedAndExclusiveConflict() throws {
        let cluster = try connect(), other = try connect()
        let pool = try freshPool(cluster)
        let otherPool = try other.pool(CephTestCluster.pool, namespace: pool.namespace)
        XCTAssertTrue(try pool.lockShared("store", name: "use", cookie: "r1", tag: "readers"))
        XCTAssertTrue(try otherPool.lockShared("store", name: "use", cookie: "r2", tag: "readers"))
        XCTAssertTrue(try pool.lockShared("store", name: "use", cookie: "r3", tag: "readers"))
        XCTAssertFalse(try otherPool.lockShared("store", name: "use", cookie: "r4", tag: "writers"), "another tag")
        XCTAssertFalse(try otherPool.lockExclusive("store", name: "use", cookie: "w"), "exclusive while held shared")
        XCTAssertFalse(try pool.lockExclusive("store", name: "use", cookie: "r1", renewal: .acquireOrRenew),
                       "a shared holder cannot turn its hold exclusive")

        let lockers = try pool.lockers("store", name: "use")
        XCTAssertFalse(lockers.exclusive)
        XCTAssertEqual(lockers.tag, "readers")
        XCTAssertEqual(Set(lockers.holders.map(\.cookie)), ["r1", "r2", "r3"])
        XCTAssertEqual(Set(lockers.holders.map(\.client)), ["client.\(cluster.instanceID)", "client.\(other.instanceID)"])

        for (p, cookie) in [(pool, "r1"), (otherPool, "r2"), (pool, "r3")] {
            XCTAssertTrue(try p.unlock("store", name: "use", cookie: cookie))
        }
        XCTAssertTrue(try otherPool.lockExclusive("store", name: "use", cookie: "w"))
        XCTAssertFalse(try pool.lockShared("store", name: "use", cookie: "r1", tag: "readers"), "shared while held exclusive")
    }

    func testBreakLock() throws {
        let cluster = try connect(), other = try connect()
        let pool = try freshPool(cluster)
        let otherPool = try other.pool(CephTestCluster.pool, namespace: pool.namespace)
        XCTAssertTrue(try pool.lockExclusive("store", name: "write", cookie: "crashed host"))
        let holder = try XCTUnwrap(otherPool.lockers("store", name: "write").holders.first)
        XCTAssertFalse(try otherPool.breakLock("store", name: "write", client: holder.client, cookie: "wrong cookie"))
        XCTAssertTrue(try otherPool.breakLock("store", name: "write", client: holder.client, cookie: holder.cookie))
        XCTAssertFalse(try otherPool.breakLock("store", name: "write", client: holder.client, cookie: holder.cookie))
        XCTAssertTrue(try otherPool.lockExclusive("store", name: "write", cookie: "new host"))
        XCTAssertFalse(try pool.lockExclusive("store", name: "write", cookie: "crashed host", renewal: .renewOnly),
                       "the old holder learns of it when it renews")
        XCTAssertFalse(try pool.unlock("store", name: "write", cookie: "crashed host"))
        XCTAssertThrowsError(try otherPool.breakLock("store", name: "write", client: "not a client", cookie: "x")) { error in
            guard case StoreError.io(let errno, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(errno, EINVAL)
        }
    }

    // MARK: Connections and pools

    func testMissingPool() throws {
        let cluster = try connect()
        XCTAssertThrowsError(try cluster.pool("no-such-pool")) { error in
            XCTAssertEqual(error as? StoreError, .storeMissing(path: "rados://no-such-pool"))
        }
    }

    func testCreateAndDeletePool() throws {
        let cluster = try connect()
        XCTAssertFalse(try cluster.createPool(CephTestCluster.pool), "exists already")
        let name = "test-\(UInt32.random(in: 0...UInt32.max))"
        XCTAssertTrue(try cluster.createPool(name))
        let pool = try cluster.pool(name, namespace: "ns")
        try pool.writeFull("x", [1])
        XCTAssertEqual(try pool.readAll("x")?.bytes, [1])
        XCTAssertTrue(try cluster.deletePool(name))
        XCTAssertFalse(try cluster.deletePool(name))
        XCTAssertThrowsError(try cluster.pool(name))
    }

    func testUsageAnswers() throws {
        let cluster = try connect()
        let usage = try cluster.usage()   // zeros here: the test cluster has no ceph-mgr
        XCTAssertGreaterThanOrEqual(usage.totalBytes, usage.availableBytes)
    }

    func testMissingConfigFileFailsAtOnce() throws {
        let clock = ContinuousClock()
        let start = clock.now
        XCTAssertThrowsError(try RadosCluster(configFile: "/nonexistent/ceph.conf")) { error in
            guard case StoreError.io(let errno, let context) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(errno, ENOENT)
            XCTAssertTrue(context.contains("/nonexistent/ceph.conf"), context)
            XCTAssertFalse("\(error)".contains("\n"))
        }
        XCTAssertLessThan(clock.now - start, .seconds(1))
    }

    func testUnreachableClusterFailsWithinTheTimeout() throws {
        // A monitor address where nothing listens: a port bound (so no one else gets it) but
        // never listened on.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                guard bind(fd, $0, length) == 0, getsockname(fd, $0, &length) == 0 else { throw POSIXError(.EADDRINUSE) }
            }
        }
        let port = UInt16(bigEndian: address.sin_port)
        let conf = NSTemporaryDirectory() + "dead-\(UUID().uuidString).conf"
        try "[global]\nmon host = [v2:127.0.0.1:\(port)]\nauth client required = none\n"
            .write(toFile: conf, atomically: true, encoding: .utf8)
        defer { unlink(conf) }

        let clock = ContinuousClock()
        let start = clock.now
        XCTAssertThrowsError(try RadosCluster(configFile: conf, user: "admin", connectTimeout: 2)) { error in
            guard case StoreError.io(let errno, let context) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(errno, ETIMEDOUT)
            XCTAssertEqual(context, "rados connect as client.admin to the cluster of \(conf)")
            XCTAssertFalse("\(error)".contains("\n"))
        }
        let took = clock.now - start
        XCTAssertLessThan(took, .seconds(6))
    }

    func testErrnoMapping() {
        XCTAssertEqual(StoreError.rados(-ENOSPC, "rados write x", pool: "p"), .diskFull(path: "rados pool p"))
        XCTAssertEqual(StoreError.rados(-EDQUOT, "rados write x", pool: "p"), .diskFull(path: "rados pool p"))
        XCTAssertEqual(StoreError.rados(-EIO, "rados write x", pool: "p"), .io(errno: EIO, context: "rados write x"))
        XCTAssertEqual(StoreError.rados(-ENOSPC, "rados create pool"), .io(errno: ENOSPC, context: "rados create pool"))
        XCTAssertEqual("\(StoreError.rados(-ENOENT, "rados read pack.000001"))", "rados read pack.000001: No such file or directory")
    }
}
