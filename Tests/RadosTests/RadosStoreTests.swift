import CephTestSupport
import Foundation
import VDiskStore
import XCTest
@testable import VDiskRados

/// The `vdiskfs` command on stores in the throw-away Ceph cluster's pool (CephTestCluster):
/// every verb on a rados:// location, two "hosts" (two --state-dir) sharing one store, gc
/// against a mount of another host. Each test uses a namespace of its own.
final class RadosStoreTests: XCTestCase {
    // MARK: one host: every verb

    func testInitImportExportListStatsVerifyCloneRemoveAndGC() throws {
        let s = try RadosTestStore(self)
        let a = s.host("a")
        XCTAssertEqual(try a.run("init").status, 0)
        a.assertFails(try a.run("init"), 14, contains: "exists")

        // A real ext4 image, built from a small tree, and an incompressible one of an odd size.
        let ext4 = try s.makeExt4Image("fs.img", megabytes: 96)
        let random = s.directory + "/random.img"
        try rstRandomBytes(8 << 20 + 12345, seed: 21).write(to: URL(fileURLWithPath: random))

        var r = try a.run("import", ext4, "vms/fs.img", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        let imported = try rstJSON(r.stdout)
        XCTAssertEqual(imported["size"] as? Int, 96 << 20)
        XCTAssertGreaterThan(imported["zero_blocks"] as? Int ?? 0, 0, "an ext4 image is mostly zeros")
        XCTAssertGreaterThan(imported["duplicate_blocks"] as? Int ?? 0, 0, "the tree holds a file twice: \(r.stdout)")
        XCTAssertEqual(try a.run("import", random, "random.img").status, 0)
        a.assertFails(try a.run("import", random, "random.img"), 14, contains: "exists")

        try a.assertExportIdentical("vms/fs.img", ext4)
        try a.assertExportIdentical("random.img", random)
        try rstSh("e2fsck -fn \(s.directory)/out-vms-fs.img >/dev/null 2>&1")

        r = try a.run("ls", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        let listed = (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]) ?? []
        XCTAssertEqual(listed.compactMap { $0["name"] as? String }.sorted(), ["random.img", "vms/fs.img"])
        XCTAssertEqual(listed.first { $0["name"] as? String == "random.img" }?["size"] as? Int, 8 << 20 + 12345)
        let stats = try rstJSON(try a.run("stats", "--json").stdout)
        XCTAssertEqual(stats["images"] as? Int, 2)
        XCTAssertEqual(stats["logical_bytes"] as? Int, 96 << 20 + 8 << 20 + 12345)
        XCTAssertEqual(try a.run("verify").status, 0)

        // A clone shares every chunk: no new pack data, and it exports the same bytes.
        let packsBefore = try s.objectBytes(prefix: "packs/")
        r = try a.run("clone", "vms/fs.img", "vms/fs-clone.img")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertLessThan(try s.objectBytes(prefix: "packs/") - packsBefore, 64 << 10, "a clone stores no chunks")
        try a.assertExportIdentical("vms/fs-clone.img", ext4)

        // gc keeps what is live: with random.img gone, the ext4 image and its clone still export.
        XCTAssertEqual(try a.run("rm", "random.img").status, 0)
        r = try a.run("gc")
        XCTAssertEqual(r.status, 0, r.stderr)
        try a.assertExportIdentical("vms/fs.img", ext4)
        try a.assertExportIdentical("vms/fs-clone.img", ext4)
        XCTAssertEqual(try a.run("verify").status, 0)

        // Everything removed and collected: the pool is back to (nearly) nothing.
        for name in ["vms/fs.img", "vms/fs-clone.img", "vms"] {
            r = try a.run("rm", name)
            XCTAssertEqual(r.status, 0, "rm \(name): \(r.stderr)")
        }
        a.assertFails(try a.run("rm", "vms/fs.img"), 15, contains: "no such image")
        r = try a.run("gc")
        XCTAssertEqual(r.status, 0, r.stderr)
        let left = try s.objects()
        let total = left.values.reduce(0, +)
        XCTAssertLessThan(total, 16 << 10, "what is left in the pool: \(left)")
        let packs = Set(left.keys.filter { $0.hasPrefix("packs/") }.map { $0.dropFirst("packs/".count) })
        let summaries = Set(left.keys.filter { $0.hasPrefix("summaries/") }.map { $0.dropFirst("summaries/".count) })
        XCTAssertTrue(summaries.isSubset(of: packs), "summaries of packs that are gone: \(left)")
        XCTAssertLessThanOrEqual(packs.count, 4, "\(left)")
        XCTAssertEqual(try a.run("ls").stdout.split(separator: "\n").count, 1, "only the header line")
        XCTAssertEqual(try a.run("verify").status, 0)
        XCTAssertEqual(try s.host("fresh").run("verify").status, 0, "a host with no state of its own sees the same")
    }

    func testBadLocationsGiveOneLineErrors() throws {
        let s = try RadosTestStore(self)
        let conf = try CephTestCluster.configFile()
        let a = s.host("a")
        // No such pool.
        var r = try a.run(location: "rados://no-such-pool-\(s.namespace)/x?conf=\(conf)", "ls")
        a.assertFails(r, 10, contains: "no such pool")
        r = try a.run(location: "rados://no-such-pool-\(s.namespace)/x?conf=\(conf)", "init")
        a.assertFails(r, 10, contains: "no such pool")
        // A pool (namespace) without a store.
        a.assertFails(try a.run("ls"), 11, contains: "not a vdiskfs store")
        a.assertFails(try a.run("import", "/etc/hostname", "x.img"), 11, contains: "not a vdiskfs store")
        XCTAssertTrue(try s.objects().isEmpty, "a failed command leaves nothing in the pool")
        // A configuration file that is not there.
        r = try a.run(location: "rados://\(CephTestCluster.pool)/\(s.namespace)?conf=\(s.directory)/missing.conf", "ls")
        XCTAssertNotEqual(r.status, 0)
        a.assertOneLine(r, contains: "missing.conf")
        // Options the location does not know, or gets wrong.
        r = try a.run(location: "rados://\(CephTestCluster.pool)/\(s.namespace)?conf=\(conf)&colour=blue", "init")
        a.assertFails(r, 19, contains: "colour")
        r = try a.run(location: "rados://\(CephTestCluster.pool)/\(s.namespace)?conf=\(conf)&lease=0", "init")
        a.assertFails(r, 19, contains: "lease")
        r = try a.run(location: "rados://?conf=\(conf)", "init")
        a.assertFails(r, 19, contains: "pool")
        let left = try s.objects()
        XCTAssertTrue(left.isEmpty, "no init went through: \(left)")
    }

    /// Removing images and collecting leaves no object behind per image ever written: the
    /// leases/NAME objects of removed images go too (else the pool's object count only grows).
    func testRemovedImagesLeaveNoLeaseObjects() throws {
        let s = try RadosTestStore(self)
        let a = s.host("a")
        XCTAssertEqual(try a.run("init").status, 0)
        let source = s.directory + "/r.img"
        try rstRandomBytes(1 << 20, seed: 51).write(to: URL(fileURLWithPath: source))
        for i in 0..<5 { XCTAssertEqual(try a.run("import", source, "d/img\(i).img").status, 0) }
        for i in 0..<5 { XCTAssertEqual(try a.run("rm", "d/img\(i).img").status, 0) }
        XCTAssertEqual(try a.run("rm", "d").status, 0)
        XCTAssertEqual(try a.run("gc").status, 0)
        let leases = try s.objects().keys.filter { $0.hasPrefix("leases/") }.sorted()
        XCTAssertEqual(leases, [], "lease objects of images that are gone")
    }

    // MARK: two hosts

    func testTwoHostsShareOneStore() throws {
        let s = try RadosTestStore(self)
        let a = s.host("a"), b = s.host("b")
        XCTAssertEqual(try a.run("init").status, 0)
        b.assertFails(try b.run("init"), 14, contains: "exists")
        let ext4 = try s.makeExt4Image("fs.img", megabytes: 64)
        XCTAssertEqual(try a.run("import", ext4, "vms/fs.img").status, 0)
        try b.assertExportIdentical("vms/fs.img", ext4)

        // Imports from both hosts at once, three rounds: every commit merges with the other's.
        var sources: [String: String] = [:]
        for round in 0..<3 {
            let fromA = s.directory + "/a\(round).raw", fromB = s.directory + "/b\(round).raw"
            try rstRandomBytes(12 << 20, seed: UInt64(100 + round)).write(to: URL(fileURLWithPath: fromA))
            try rstRandomBytes(12 << 20, seed: UInt64(200 + round)).write(to: URL(fileURLWithPath: fromB))
            sources["a\(round).img"] = fromA
            sources["b/\(round).img"] = fromB
            let results = rstConcurrently([
                { try a.run("import", fromA, "a\(round).img") },
                { try b.run("import", fromB, "b/\(round).img") },
            ])
            for r in results { XCTAssertEqual(r.status, 0, "round \(round): \(r.stderr)") }
        }
        let expected = (["vms/fs.img"] + sources.keys).sorted()
        for host in [a, b] {
            let names = (try JSONSerialization.jsonObject(with: Data(try host.run("ls", "--json").stdout.utf8)) as? [[String: Any]] ?? [])
                .compactMap { $0["name"] as? String }.sorted()
            XCTAssertEqual(names, expected, "host \(host.name) lists every image of both hosts")
            XCTAssertEqual(try host.run("verify").status, 0)
        }
        for (name, source) in sources.sorted(by: { $0.key < $1.key }) {
            try (name.hasPrefix("a") ? b : a).assertExportIdentical(name, source)
        }
        try a.assertExportIdentical("vms/fs.img", ext4)
    }

    /// One host's chunks are found by the other: importing on B what A imported stores nothing
    /// new (once A's command has ended, its pack is complete).
    func testSecondHostDeduplicatesAgainstTheFirst() throws {
        let s = try RadosTestStore(self)
        let a = s.host("a"), b = s.host("b")
        XCTAssertEqual(try a.run("init").status, 0)
        let source = s.directory + "/r.img"
        try rstRandomBytes(8 << 20, seed: 31).write(to: URL(fileURLWithPath: source))
        let first = try rstJSON(try a.run("import", source, "one.img", "--json").stdout)
        XCTAssertEqual(first["new_chunks"] as? Int, 2048)
        let again = try rstJSON(try a.run("import", source, "two.img", "--json").stdout)
        XCTAssertEqual(again["new_chunks"] as? Int, 0, "the same host dedups")
        let r = try b.run("import", source, "three.img", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        let other = try rstJSON(r.stdout)
        XCTAssertEqual(other["new_chunks"] as? Int, 0, "host b stores again what host a stored: \(r.stdout)")
        let stats = try rstJSON(try b.run("stats", "--json").stdout)
        XCTAssertEqual(stats["unique_chunks"] as? Int, 2048, "\(stats)")
    }

    // MARK: gc and mounts of other hosts

    func testGCWaitsForEveryHostsMountAndForCrashedJournals() throws {
        let s = try RadosTestStore(self)
        let a = s.host("a"), b = s.host("b")
        XCTAssertEqual(try a.run("init").status, 0)
        let source = s.directory + "/r.img"
        try rstRandomBytes(4 << 20, seed: 41).write(to: URL(fileURLWithPath: source))
        XCTAssertEqual(try b.run("import", source, "junk.img").status, 0)
        XCTAssertEqual(try b.run("rm", "junk.img").status, 0)

        // Mounted on host a: gc on host b is refused, naming the mount.
        let mountpoint = try a.mount()
        var r = try b.run("gc")
        b.assertFails(r, 13, contains: "vdiskfs mount")
        XCTAssertTrue(r.stderr.contains(mountpoint), r.stderr)
        // A dry run changes nothing: it may print the plan or say the store is in use, but the
        // live mount's journal is no crashed mount's journal to replay.
        r = try b.run("gc", "--dry-run")
        XCTAssertTrue(r.status == 0 || r.status == 13, "gc --dry-run beside a live mount: exit \(r.status): \(r.stderr)")
        try rstSh("cp \(source) \(mountpoint)/live.img")
        try a.unmount()
        r = try b.run("gc")
        XCTAssertEqual(r.status, 0, "gc after the unmount: \(r.stderr)")
        try b.assertExportIdentical("live.img", source)

        // A mount killed with writes in its journal: gc waits (22) until it is replayed.
        let mountpoint2 = try a.mount()
        try rstSh("dd if=/dev/urandom of=\(mountpoint2)/live.img bs=64k count=4 conv=notrunc,fsync status=none")
        try a.kill9()
        r = try b.run("gc")
        b.assertFails(r, 22, contains: "journal")
        _ = try a.mount()
        try a.unmount()
        r = try b.run("gc")
        XCTAssertEqual(r.status, 0, "gc after the journal was replayed: \(r.stderr)")
        XCTAssertEqual(try b.run("verify").status, 0)
    }
}

// MARK: - helpers

/// A namespace of the test cluster's pool for one test, a temporary directory, and "hosts"
/// (each a --state-dir of its own) running the real `vdiskfs` on it.
final class RadosTestStore {
    let namespace: String
    let directory: String
    let location: String
    private unowned let test: XCTestCase
    private var hosts: [RadosTestHost] = []

    init(_ test: XCTestCase, lease: Int = 3) throws {
        self.test = test
        let conf = try CephTestCluster.configFile()
        let id = UUID().uuidString.prefix(8).lowercased()
        namespace = "rst-\(id)"
        directory = "/tmp/vdiskfs-rt-\(id)"
        location = "rados://\(CephTestCluster.pool)/\(namespace)?conf=\(conf)&lease=\(lease)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        test.addTeardownBlock { [self] in
            for h in hosts { h.tearDown() }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// The host named `name` (its state directory is DIRECTORY/state-NAME).
    func host(_ name: String) -> RadosTestHost {
        if let h = hosts.first(where: { $0.name == name }) { return h }
        let h = RadosTestHost(store: self, name: name)
        hosts.append(h)
        return h
    }

    /// An ext4 image of `megabytes` built with mkfs.ext4 -d from a small tree: text files, an
    /// incompressible file and a copy of it (duplicate blocks within the image).
    func makeExt4Image(_ name: String, megabytes: Int) throws -> String {
        let tree = directory + "/tree-" + name
        try FileManager.default.createDirectory(atPath: tree + "/docs", withIntermediateDirectories: true)
        try rstSh("cp -r /usr/share/common-licenses \(tree)/docs/ && cp /etc/services /etc/protocols \(tree)/docs/ 2>/dev/null; true")
        try rstRandomBytes(3 << 20 + 4321, seed: 7).write(to: URL(fileURLWithPath: tree + "/blob"))
        try rstSh("cp \(tree)/blob \(tree)/docs/blob-copy && mkdir -p \(tree)/empty/dir")
        let image = directory + "/" + name
        try rstSh("mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -d \(tree) \(image) \(megabytes)M")
        return image
    }

    /// The objects in the test's namespace and their sizes.
    func objects() throws -> [String: UInt64] {
        let cluster = try RadosCluster(configFile: try CephTestCluster.configFile())
        let pool = try cluster.pool(CephTestCluster.pool, namespace: namespace)
        var out: [String: UInt64] = [:]
        for name in try pool.objects() { out[name] = try pool.size(name) ?? 0 }
        return out
    }

    func objectBytes(prefix: String) throws -> UInt64 {
        try objects().filter { $0.key.hasPrefix(prefix) }.values.reduce(0, +)
    }
}

/// One "host" of a RadosTestStore: the vdiskfs command with --state-dir of its own, and at
/// most one mount.
final class RadosTestHost: @unchecked Sendable {
    let name: String
    let stateDirectory: String
    let mountpoint: String
    let location: String
    private let directory: String

    init(store: RadosTestStore, name: String) {
        self.name = name
        directory = store.directory
        stateDirectory = store.directory + "/state-" + name
        mountpoint = store.directory + "/mnt-" + name
        location = store.location
    }

    /// `vdiskfs ARGUMENTS -s LOCATION --state-dir STATE`.
    func run(_ arguments: String...) throws -> RSTResult {
        try rstRun(RSTBinary.path, arguments + ["-s", location, "--state-dir", stateDirectory])
    }

    /// The same, with another location.
    func run(location: String, _ arguments: String...) throws -> RSTResult {
        try rstRun(RSTBinary.path, arguments + ["-s", location, "--state-dir", stateDirectory])
    }

    /// Exports `image` and compares it with `original` byte for byte.
    func assertExportIdentical(_ image: String, _ original: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let out = directory + "/out-" + image.replacingOccurrences(of: "/", with: "-")
        let r = try run("export", image, out, "--force")
        XCTAssertEqual(r.status, 0, "export \(image) on host \(name): \(r.stderr)", file: file, line: line)
        let cmp = try rstRun("/usr/bin/cmp", [original, out])
        XCTAssertEqual(cmp.status, 0, "\(image) exported on host \(name) differs: \(cmp.stdout)\(cmp.stderr)", file: file, line: line)
    }

    func assertFails(_ r: RSTResult, _ code: Int32, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, code, r.stderr, file: file, line: line)
        assertOneLine(r, contains: contains, file: file, line: line)
    }

    func assertOneLine(_ r: RSTResult, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "expected one line: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("vdiskfs: ") && r.stderr.contains(contains), "expected '\(contains)': \(r.stderr)", file: file, line: line)
    }

    // MARK: mounting

    /// Mounts the store on this host's mountpoint; returns the mountpoint.
    @discardableResult
    func mount() throws -> String {
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let r = try run("mount", mountpoint)
        XCTAssertEqual(r.status, 0, "mount on host \(name): \(r.stderr)\n\(log)")
        guard r.status == 0 else { throw RSTFailure(description: "mount failed: \(r.stderr)") }
        return mountpoint
    }

    var isMounted: Bool {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first.map(String.init) == mountpoint }
    }

    var log: String { (try? String(contentsOfFile: stateDirectory + "/rados/" + locationPath + "/mount.log", encoding: .utf8)) ?? "" }

    private var locationPath: String {
        String(location.dropFirst("rados://".count).prefix { $0 != "?" })
    }

    /// Unmounts and waits until the daemon has gone.
    func unmount() throws {
        let daemon = daemonPID()
        if isMounted {
            if try rstRun("/usr/bin/env", ["fusermount3", "-u", mountpoint]).status != 0 {
                _ = try rstRun("/usr/bin/env", ["umount", "-l", mountpoint])
            }
        }
        XCTAssertFalse(isMounted, "\(mountpoint) is still mounted")
        if let daemon { XCTAssertTrue(rstWaitUntilGone(daemon, timeout: 60), "daemon \(daemon) did not exit:\n\(log)") }
    }

    /// kill -9 of the mount's daemon; waits until it is gone (reaped), then unmounts.
    func kill9() throws {
        guard let daemon = daemonPID() else { throw RSTFailure(description: "no daemon on \(mountpoint)") }
        XCTAssertEqual(Glibc.kill(daemon, SIGKILL), 0)
        XCTAssertTrue(rstWaitUntilGone(daemon, timeout: 30))
        try unmount()
    }

    func daemonPID() -> pid_t? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for entry in entries {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.contains("--ready-fd") && args.contains(mountpoint) && args.contains("mount") { return pid }
        }
        return nil
    }

    func tearDown() {
        if let pid = daemonPID() { Glibc.kill(pid, SIGCONT) }
        if isMounted {
            try? unmount()
            XCTFail("host \(name) left \(mountpoint) mounted")
        }
        if let pid = daemonPID(), !rstWaitUntilGone(pid, timeout: 30) {
            Glibc.kill(pid, SIGKILL)
            XCTFail("daemon \(pid) of host \(name) leaked")
        }
        XCTAssertFalse(log.contains("Fatal error"), "the daemon crashed:\n\(log)")
    }
}

struct RSTFailure: Error, CustomStringConvertible { var description: String }

/// Waits until process `pid` (not a child of ours) is gone: not even a zombie.
func rstWaitUntilGone(_ pid: pid_t, timeout: TimeInterval) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        usleep(20_000)
    }
    return false
}

func rstJSON(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
    guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
        XCTFail("not a JSON object: \(text)", file: file, line: line)
        return [:]
    }
    return object
}

/// Runs every closure at the same time, each on a thread of its own; their results in order.
func rstConcurrently(_ jobs: [() throws -> RSTResult]) -> [RSTResult] {
    final class Box: @unchecked Sendable {
        var results: [RSTResult?]
        init(_ count: Int) { results = Array(repeating: nil, count: count) }
    }
    let box = Box(jobs.count)
    let lock = NSLock()
    let group = DispatchGroup()
    for (i, job) in jobs.enumerated() {
        group.enter()
        Thread {
            let r = (try? job()) ?? RSTResult(status: -1, stdout: "", stderr: "could not run")
            lock.lock(); box.results[i] = r; lock.unlock()
            group.leave()
        }.start()
    }
    group.wait()
    return box.results.map { $0! }
}

/// `count` pseudo-random bytes from a SplitMix64 sequence (incompressible; every block distinct).
func rstRandomBytes(_ count: Int, seed: UInt64) -> Data {
    var state = seed
    var data = Data(count: (count + 7) / 8 * 8)
    data.withUnsafeMutableBytes { raw in
        for i in raw.bindMemory(to: UInt64.self).indices {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            raw.bindMemory(to: UInt64.self)[i] = z ^ (z >> 31)
        }
    }
    return data.prefix(count)
}

/// The `vdiskfs` binary under test: $VDISKFS_BIN, else the one beside the test bundle, else
/// .build/debug/vdiskfs (as MountTests' VDiskfsBinary).
enum RSTBinary {
    static let path: String = {
        if let p = ProcessInfo.processInfo.environment["VDISKFS_BIN"], !p.isEmpty { return p }
        var candidates = [Bundle.main.bundleURL.appendingPathComponent("vdiskfs").path,
                          URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vdiskfs").path]
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            candidates.append(bundle.bundleURL.deletingLastPathComponent().appendingPathComponent("vdiskfs").path)
        }
        candidates.append(CephTestCluster.repositoryRoot.appendingPathComponent(".build/debug/vdiskfs").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()
}

struct RSTResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

@discardableResult
func rstSh(_ command: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let r = try rstRun("/bin/sh", ["-c", command])
    XCTAssertEqual(r.status, 0, "\(command)\n\(r.stderr)", file: file, line: line)
    return r.stdout
}

/// Runs `program` with standard input on /dev/null and captures its output. Spawned directly,
/// with every descriptor of this process above 2 close-on-exec (as MountTests' runProgram):
/// daemons started by the child must inherit nothing. Safe to call from several threads.
func rstRun(_ program: String, _ arguments: [String]) throws -> RSTResult {
    // One spawn at a time: another thread's child must not inherit this one's pipes.
    rstSpawnLock.lock()
    var locked = true
    defer { if locked { rstSpawnLock.unlock() } }
    var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
    guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw POSIXError(.EMFILE) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
        guard let fd = Int32(name), fd > 2 else { continue }
        let flags = fcntl(fd, F_GETFD)
        if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
    }
    var environment = ProcessInfo.processInfo.environment
    environment["VDISKFS_STORE"] = nil
    environment["VDISKFS_STATE_DIR"] = nil
    let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    defer { (env + argv).forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, program, &actions, nil, argv, env)
    close(outPipe[1])
    close(errPipe[1])
    rstSpawnLock.unlock()
    locked = false
    defer { close(outPipe[0]); close(errPipe[0]) }
    guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .ENOENT) }
    final class Box: @unchecked Sendable { var data = Data() }
    let errData = Box()
    let done = DispatchSemaphore(value: 0)
    let errFD = errPipe[0]
    Thread { errData.data = rstReadAll(errFD); done.signal() }.start()
    let outData = rstReadAll(outPipe[0])
    done.wait()
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return RSTResult(status: code, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData.data, as: UTF8.self))
}

private let rstSpawnLock = NSLock()

private func rstReadAll(_ fd: Int32) -> Data {
    var data = Data()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 { data.append(contentsOf: chunk[0..<n]); continue }
        if n < 0 && errno == EINTR { continue }
        return data
    }
}
