import CephTestSupport
import Foundation
import XCTest

/// Real FUSE mounts of stores in the test process's throw-away Ceph cluster (CephTestCluster):
/// crash recovery and fio verification on a RADOS store, two mounts ("hosts", each with a
/// --state-dir of its own) of one store and their image leases, and a QEMU guest booting from
/// the mount. Leases last 3 s (`lease=3`) unless a test says otherwise; mounts take other
/// hosts' commits every flush interval (5 s), so cross-host checks poll with a deadline.
final class RadosMountTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else { throw XCTSkip("no /dev/fuse") }
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: VDiskfsBinary.path), "no binary at \(VDiskfsBinary.path)")
    }

    /// No test may leave a vdiskfs mount of a test store behind.
    override class func tearDown() {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let leaked = text.split(separator: "\n").filter { $0.contains("fuse.vdiskfs") && $0.contains("/tmp/vdiskfs-mt-") }
        XCTAssertTrue(leaked.isEmpty, "leaked mounts:\n\(leaked.joined(separator: "\n"))")
        super.tearDown()
    }

    // MARK: one mount: crashes and fio

    /// kill -9 of the mount while fio writes with O_SYNC: every write fio saw acknowledged
    /// (its verify state) reads back after the remount replays the journal.
    func testOSyncWritesSurviveKill9DuringTheLoad() throws {
        let m = try MountFixture(self, backend: .rados())
        try m.mount()
        let common = "--name=s --filename=\(m.path("sync.img")) --size=16m --bs=4k --rw=randwrite --verify=crc32c --randrepeat=1 --randseed=9 --ioengine=psync"
        let fio = try BackgroundProgram("/bin/sh", ["-c", "cd \(m.directory) && exec fio \(common) --sync=1 --do_verify=0 --verify_state_save=1 --time_based --runtime=120 --output=\(m.directory)/fio-write.txt"])
        // Until the journal holds 1 MiB of acknowledged writes.
        XCTAssertTrue(eventually(30) { journalBytes(m) >= 1 << 20 }, "fio wrote nothing:\n\(m.log)")
        guard let daemon = m.daemonPID() else { return XCTFail("no daemon") }
        XCTAssertEqual(kill(daemon, SIGKILL), 0)
        XCTAssertNotEqual(fio.wait(), 0, "fio's writes fail once the daemon is gone")
        // Until the pid is gone altogether: a zombie still "holds" the image's lease (see
        // testDeadHoldersLeaseIsBrokenByTheNextMountOnThisHost).
        XCTAssertTrue(m.waitUntilReaped(daemon))
        try m.unmount()
        try m.mount()
        let r = try runProgram("/bin/sh", ["-c", "cd \(m.directory) && fio \(common) --verify_only --verify_state_load=1 --output-format=json --output=\(m.directory)/fio-verify.json"])
        XCTAssertEqual(r.status, 0, "acknowledged writes were lost: \(r.stderr)\n\((try? String(contentsOfFile: m.directory + "/fio-verify.json", encoding: .utf8)) ?? "")")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: m.directory + "/fio-verify.json"))) as? [String: Any]
        let job = (report?["jobs"] as? [[String: Any]])?.first
        XCTAssertGreaterThanOrEqual((job?["read"] as? [String: Any])?["io_bytes"] as? Int ?? 0, 512 << 10, "fio verified what it had written")
        XCTAssertTrue(m.log.contains("replaying the journal"), m.log)
        try m.unmount()
        let v = try m.cli("verify")
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
    }

    func testFioVerifySurvivesRemount() throws {
        let m = try MountFixture(self, backend: .rados())
        try m.mount()
        let common = "--name=v --filename=\(m.path("fio.img")) --size=16m --bs=4k --rw=randwrite --verify=crc32c --randrepeat=1 --randseed=42 --verify_state_save=0"
        try sh("cd \(m.directory) && fio \(common) --ioengine=psync --do_verify=1 --output=/dev/null")
        try sh("cd \(m.directory) && fio \(common) --ioengine=libaio --direct=1 --iodepth=16 --do_verify=1 --output=/dev/null")
        try m.remount()
        try sh("cd \(m.directory) && fio \(common) --ioengine=psync --verify_only --output=/dev/null")
        try m.unmount()
        let v = try m.cli("verify")
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
    }

    /// `vdiskfs unmount` finds a RADOS mount's control socket through --state-dir and waits
    /// for the final flush; without the right state directory it refuses and leaves the
    /// mount alone rather than wait on a lock it cannot see.
    func testUnmountWaitsForTheFinalFlushOfARadosMount() throws {
        let m = try MountFixture(self, backend: .rados())
        try m.mount()
        try sh("head -c 20000000 /dev/urandom > \(m.path("a.img"))")
        let wrong = try vdiskfs("unmount", m.mountpoint, "--state-dir", m.directory + "/elsewhere")
        XCTAssertEqual(wrong.status, 19, wrong.stderr)
        XCTAssertTrue(wrong.stderr.contains("--state-dir"), wrong.stderr)
        XCTAssertTrue(m.isMounted)
        let r = try vdiskfs("unmount", m.mountpoint, "--state-dir", m.stateDirectory!)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(m.isMounted)
        // No waiting needed: the store is free and holds the data.
        let ls = try m.cli("ls", "--json")
        XCTAssertEqual(ls.status, 0, ls.stderr)
        XCTAssertTrue(ls.stdout.contains("\"size\" : 20000000"), ls.stdout)
    }

    // MARK: two mounts of one store

    func testTwoMountsSeeEachOthersImagesAndSnapshots() throws {
        let a = try MountFixture(self, backend: .rados())
        let b = try MountFixture(self, sharing: a)
        try a.mount()
        try b.mount()
        let fromA = randomBytes(3 << 20 + 1000, seed: 61), fromB = randomBytes(2 << 20, seed: 62)
        XCTAssertEqual(mkdir(a.path("vms"), 0o755), 0)
        try fromA.write(to: URL(fileURLWithPath: a.path("vms/a.img")))
        try fromB.write(to: URL(fileURLWithPath: b.path("b.img")))
        XCTAssertTrue(eventually(30) { fileContents(b.path("vms/a.img")) == fromA }, "mount b never showed a's image:\n\(b.log)")
        XCTAssertTrue(eventually(30) { fileContents(a.path("b.img")) == fromB }, "mount a never showed b's image:\n\(a.log)")

        // A snapshot taken on a (of both hosts' images) is browsable, read-only, on b.
        XCTAssertEqual(mkdir(a.path(".snapshots/s1"), 0o755), 0, String(cString: strerror(errno)))
        XCTAssertTrue(eventually(30) { fileContents(b.path(".snapshots/s1/vms/a.img")) == fromA }, "b never showed a's snapshot:\n\(b.log)")
        XCTAssertEqual(fileContents(b.path(".snapshots/s1/b.img")), fromB)
        XCTAssertEqual(open(b.path(".snapshots/s1/b.img"), O_RDWR), -1)
        XCTAssertEqual(errno, EROFS)

        // Later changes on either host show live on the other, never in the snapshot.
        let patch = randomBytes(8192, seed: 63)
        try pwriteAll(a.path("vms/a.img"), patch, at: 4096)
        var changed = fromA
        changed.replaceSubrange(4096..<(4096 + 8192), with: patch)
        XCTAssertEqual(unlink(b.path("b.img")), 0)
        XCTAssertTrue(eventually(30) { fileContents(b.path("vms/a.img")) == changed }, "b never showed a's write")
        XCTAssertTrue(eventually(30) { !FileManager.default.fileExists(atPath: a.path("b.img")) }, "a still shows the image b removed")
        XCTAssertEqual(fileContents(b.path(".snapshots/s1/vms/a.img")), fromA)
        XCTAssertEqual(fileContents(a.path(".snapshots/s1/b.img")), fromB)
        try a.unmount()
        try b.unmount()
        let v = try a.cli("verify")
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
    }

    func testSecondWriterGetsEBUSYWhileTheFirstHoldsTheImage() throws {
        let a = try MountFixture(self, backend: .rados())
        let b = try MountFixture(self, sharing: a)
        try a.mount()
        try b.mount()
        let data = randomBytes(1 << 20, seed: 71)
        XCTAssertEqual(mkdir(a.path("vms"), 0o755), 0)
        try data.write(to: URL(fileURLWithPath: a.path("vms/disk.img")))
        XCTAssertTrue(eventually(30) { fileContents(b.path("vms/disk.img")) == data }, "b never showed a's image")

        let held = open(a.path("vms/disk.img"), O_RDWR)
        XCTAssertGreaterThanOrEqual(held, 0)
        let list = try b.cli("lease", "list")
        XCTAssertEqual(list.status, 0, list.stderr)
        let daemonA = a.daemonPID() ?? -1
        XCTAssertTrue(list.stdout.contains("vms/disk.img\thost \(hostName()) pid \(daemonA) (vdiskfs mount) since "), "lease list: \(list.stdout)")

        // Every way of changing the image fails with EBUSY on b; reading works.
        for flags in [O_RDWR, O_WRONLY, O_WRONLY | O_TRUNC] {
            let fd = open(b.path("vms/disk.img"), flags)
            XCTAssertEqual(fd, -1, "open with flags \(flags) on b")
            XCTAssertEqual(errno, EBUSY, "open with flags \(flags): \(String(cString: strerror(errno)))")
            if fd >= 0 { close(fd) }
        }
        XCTAssertEqual(truncate(b.path("vms/disk.img"), 0), -1)
        XCTAssertEqual(errno, EBUSY)
        XCTAssertEqual(rename(b.path("vms/disk.img"), b.path("vms/moved.img")), -1)
        XCTAssertEqual(errno, EBUSY)
        XCTAssertEqual(unlink(b.path("vms/disk.img")), -1)
        XCTAssertEqual(errno, EBUSY)
        XCTAssertEqual(fileContents(b.path("vms/disk.img")), data, "read-only access works")
        try Data("other".utf8).write(to: URL(fileURLWithPath: b.path("vms/other.img")))

        // Once a has closed the image (and given the lease back), b can write it.
        XCTAssertEqual(Glibc.pwrite(held, [UInt8]("AAAA".utf8), 4, 0), 4)
        XCTAssertEqual(fsync(held), 0)
        close(held)
        var writable: Int32 = -1
        XCTAssertTrue(eventually(30) { writable = open(b.path("vms/disk.img"), O_RDWR); return writable >= 0 }, "b never got the lease:\n\(b.log)")
        if writable >= 0 {
            XCTAssertEqual(Glibc.pwrite(writable, [UInt8]("BBBB".utf8), 4, 4), 4)
            let l = try a.cli("lease", "list")
            XCTAssertTrue(l.stdout.contains("vms/disk.img\thost \(hostName()) pid \(b.daemonPID() ?? -1) (vdiskfs mount) since "), "lease list: \(l.stdout)")
            close(writable)
        }
        var expected = data
        expected.replaceSubrange(0..<8, with: Data("AAAABBBB".utf8))
        XCTAssertTrue(eventually(30) { fileContents(a.path("vms/disk.img")) == expected }, "a never showed b's write")
        XCTAssertTrue(FileManager.default.fileExists(atPath: a.path("vms/other.img")))
        try a.unmount()
        try b.unmount()
        XCTAssertEqual(try a.cli("verify").status, 0)
    }

    /// A holder that stops renewing (kill -STOP: alive, so no one may break its lease) loses
    /// the lease after `lease` seconds; the other mount can write then.
    func testStoppedHoldersLeaseExpires() throws {
        let (a, b, holder) = try stoppedHolder()
        holder.resume()
        try a.unmount()
        try b.unmount()
        let out = a.directory + "/x.out"
        XCTAssertEqual(try a.cli("export", "x.img", out).status, 0)
        XCTAssertEqual(fileContents(out)?.prefix(4), Data("DDDD".utf8), "b's write after the lease expired is in the store")
        XCTAssertEqual(try a.cli("verify").status, 0)
    }

    /// After the stopped holder resumes, the image it lost is the other host's: it must show the
    /// other host's write, and its own later commits must not put its old version back.
    func testHolderWhoseLeaseLapsedDoesNotRevertTheNewWritersCommit() throws {
        let (a, b, holder) = try stoppedHolder()
        let third = a.directory + "/state-third"
        func committed() -> Data? {
            let out = a.directory + "/x-\(UUID().uuidString.prefix(6)).out"
            let r = try? runProgram(VDiskfsBinary.path, ["export", "x.img", out, "-s", a.store, "--state-dir", third])
            defer { unlink(out) }
            return r?.status == 0 ? fileContents(out)?.prefix(4) : nil
        }
        XCTAssertTrue(eventually(30) { committed() == Data("DDDD".utf8) }, "b's write was never committed:\n\(b.log)")
        holder.resume()
        XCTAssertTrue(eventually(20) { fileContents(a.path("x.img"))?.prefix(4) == Data("DDDD".utf8) },
                      "a still shows its own old version of x.img (CCCC) after losing the lease: \(String(decoding: fileContents(a.path("x.img"))?.prefix(4) ?? Data(), as: UTF8.self))")
        // a commits something else: the namespace it commits must not carry its stale x.img.
        try Data("y".utf8).write(to: URL(fileURLWithPath: a.path("y.img")))
        XCTAssertTrue(eventually(30) { FileManager.default.fileExists(atPath: b.path("y.img")) }, "b never showed a's y.img")
        XCTAssertEqual(committed(), Data("DDDD".utf8), "a's commit of y.img put its stale x.img back over b's committed write")
        XCTAssertTrue(eventually(10) { fileContents(b.path("x.img"))?.prefix(4) == Data("DDDD".utf8) }, "b lost its own write")
        try a.unmount()
        try b.unmount()
    }

    /// A mount killed (-9) while holding a lease: the next mount on this host breaks the lease
    /// at once (the holder's pid is dead), long before it would expire (lease=30 here); the
    /// killed mount's fsynced writes come back when it is mounted again.
    func testDeadHoldersLeaseIsBrokenByTheNextMountOnThisHost() throws {
        let a = try MountFixture(self, backend: .rados(lease: 30))
        let b = try MountFixture(self, sharing: a)
        try a.mount()
        try b.mount()
        let data = randomBytes(256 << 10, seed: 81)
        try data.write(to: URL(fileURLWithPath: a.path("x.img")))
        XCTAssertTrue(eventually(30) { FileManager.default.fileExists(atPath: b.path("x.img")) })
        let held = open(a.path("x.img"), O_RDWR)
        XCTAssertGreaterThanOrEqual(held, 0)
        XCTAssertEqual(Glibc.pwrite(held, [UInt8]("AAAA".utf8), 4, 0), 4)
        XCTAssertEqual(fsync(held), 0)
        XCTAssertEqual(open(b.path("x.img"), O_RDWR), -1)
        XCTAssertEqual(errno, EBUSY)

        guard let daemonA = a.daemonPID() else { return XCTFail("no daemon") }
        XCTAssertEqual(kill(daemonA, SIGKILL), 0)
        XCTAssertTrue(a.waitForExit(daemonA), "the daemon did not die")
        let wasZombie = ((try? String(contentsOfFile: "/proc/\(daemonA)/stat", encoding: .utf8)) ?? "").contains(") Z ")
        // Dead, even if not yet reaped: its lease is this host's to break.
        var fd = open(b.path("x.img"), O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0, "b cannot open x.img right after the holder was killed (\(String(cString: strerror(errno))); the holder was \(wasZombie ? "a zombie, not yet reaped" : "gone"))")
        if fd < 0 {
            XCTAssertTrue(a.waitUntilReaped(daemonA))
            fd = open(b.path("x.img"), O_RDWR)
            XCTAssertGreaterThanOrEqual(fd, 0, "b cannot open x.img once the holder is gone: \(String(cString: strerror(errno)))")
        }
        XCTAssertTrue(b.log.contains("broke the lock on leases/x.img of a dead process of this host"), b.log)
        if fd >= 0 { close(fd) }
        close(held)
        XCTAssertTrue(a.waitUntilReaped(daemonA))
        try a.unmount()
        // b gives the lease back once idle; a's remount replays its journal into x.img.
        XCTAssertTrue(eventually(30) { (try? a.cli("lease", "list").stdout.contains("x.img")) == false }, "b kept the lease")
        try a.mount()
        XCTAssertTrue(a.log.contains("replaying the journal"), a.log)
        var expected = data
        expected.replaceSubrange(0..<4, with: Data("AAAA".utf8))
        XCTAssertEqual(fileContents(a.path("x.img")), expected, "a's fsynced write survived")
        XCTAssertTrue(eventually(30) { fileContents(b.path("x.img")) == expected }, "b never showed a's replayed write")
        try a.unmount()
        try b.unmount()
        XCTAssertEqual(try a.cli("verify").status, 0)
    }

    // MARK: QEMU

    func testGuestBootsFromTheMount() throws {
        try QEMUBootTests.makeGuest()
        try QEMUBootTests.guestBootRound(on: MountFixture(self, backend: .rados()))
    }

    // MARK: helpers

    /// Two mounts a and b of one store; a holds x.img's lease (a helper process keeps an
    /// O_RDWR handle open; a's write "CCCC" is committed) and is then stopped (SIGSTOP).
    /// Returns once b has taken the lease after it expired and written "DDDD" (fsynced).
    ///
    /// The handle lives in a helper process, not in this one: while a's daemon is stopped,
    /// any close of a descriptor on a's mount waits for it (FUSE sends FLUSH on every close),
    /// and every process this test spawns closes its inherited close-on-exec descriptors at
    /// exec. `StoppedHolder.resume()` sends SIGCONT first, then ends the helper.
    private func stoppedHolder(file: StaticString = #filePath, line: UInt = #line) throws -> (MountFixture, MountFixture, StoppedHolder) {
        let a = try MountFixture(self, backend: .rados())
        let b = try MountFixture(self, sharing: a)
        try a.mount()
        try b.mount()
        try randomBytes(64 << 10, seed: 91).write(to: URL(fileURLWithPath: a.path("x.img")))
        let helper = try BackgroundProgram("/bin/sh", ["-c", "exec sleep 600 3<>\(a.path("x.img"))"])
        try pwriteAll(a.path("x.img"), Data("CCCC".utf8), at: 0, fsync: true)
        XCTAssertTrue(eventually(30) { fileContents(b.path("x.img"))?.prefix(4) == Data("CCCC".utf8) }, "b never showed a's write", file: file, line: line)
        XCTAssertTrue(eventually(10) { (try? a.cli("lease", "list").stdout.contains("x.img\t")) == true }, "a holds the lease", file: file, line: line)
        XCTAssertEqual(open(b.path("x.img"), O_RDWR), -1, "a holds the lease", file: file, line: line)
        XCTAssertEqual(errno, EBUSY, file: file, line: line)
        guard let daemonA = a.daemonPID() else { throw NSError(domain: "RadosMountTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "no daemon"]) }
        // From here until SIGCONT nothing may touch a's mount (it would wait for the daemon).
        XCTAssertEqual(kill(daemonA, SIGSTOP), 0, file: file, line: line)
        let holder = StoppedHolder(helper: helper, daemon: daemonA)
        let stopped = Date()
        var fd: Int32 = -1
        XCTAssertTrue(eventually(20) { fd = open(b.path("x.img"), O_RDWR); return fd >= 0 }, "a's lease never expired", file: file, line: line)
        let waited = Date().timeIntervalSince(stopped)
        XCTAssertLessThan(waited, 10, "the lease lasts 3 s", file: file, line: line)
        XCTAssertEqual(Glibc.pwrite(fd, [UInt8]("DDDD".utf8), 4, 0), 4, file: file, line: line)
        XCTAssertEqual(fsync(fd), 0, file: file, line: line)
        XCTAssertEqual(fileContents(b.path("x.img"))?.prefix(4), Data("DDDD".utf8), file: file, line: line)
        let list = try b.cli("lease", "list")
        XCTAssertTrue(list.stdout.contains("x.img\thost \(hostName()) pid \(b.daemonPID() ?? -1) (vdiskfs mount) since "), "lease list: \(list.stdout)", file: file, line: line)
        close(fd)
        return (a, b, holder)
    }
}

/// A stopped mount daemon and the helper process holding a write handle on its mount:
/// `resume()` sends SIGCONT, then ends the helper (its handle closes); once.
final class StoppedHolder {
    let helper: BackgroundProgram
    let daemon: pid_t
    private var resumed = false
    init(helper: BackgroundProgram, daemon: pid_t) { self.helper = helper; self.daemon = daemon }
    func resume() {
        guard !resumed else { return }
        resumed = true
        kill(daemon, SIGCONT)
        kill(helper.pid, SIGKILL)
        helper.wait()
    }
    deinit { resume() }
}

/// Polls `condition` every 100 ms until it holds (true) or `seconds` pass (false).
func eventually(_ seconds: Double, _ condition: () throws -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        if (try? condition()) == true { return true }
        usleep(100_000)
    } while Date() < deadline
    return (try? condition()) == true
}

/// The file's bytes, or nil when it cannot be read.
func fileContents(_ path: String) -> Data? { try? Data(contentsOf: URL(fileURLWithPath: path)) }

func pwriteAll(_ path: String, _ data: Data, at offset: Int, fsync sync: Bool = false) throws {
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    defer { close(fd) }
    let n = data.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
    guard n == data.count, !sync || fsync(fd) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
}

func hostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    gethostname(&name, name.count - 1)
    return String(cString: name)
}

/// Bytes in the mount's journal segments.
func journalBytes(_ m: MountFixture) -> Int {
    let dir = m.hostDirectory + "/journal"
    return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).reduce(0) { sum, name in
        sum + ((try? FileManager.default.attributesOfItem(atPath: dir + "/" + name)[.size] as? Int) ?? 0)
    }
}

/// A program running in the background (output to /dev/null; its own output options say
/// where), spawned like runProgram: it inherits no descriptor of this process above 2.
final class BackgroundProgram {
    let pid: pid_t
    private var status: Int32?

    init(_ program: String, _ arguments: [String]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            guard let fd = Int32(name), fd > 2 else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
        let env = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { (env + argv).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, program, &actions, nil, argv, env)
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .ENOENT) }
        self.pid = pid
    }

    /// Waits for the program to end; its exit status (128+N for signal N).
    @discardableResult
    func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        let code = raw & 0x7f == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        status = code
        return code
    }

    deinit {
        if status == nil { kill(pid, SIGKILL); wait() }
    }
}
