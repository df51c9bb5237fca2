import Foundation
import XCTest

/// Real FUSE mounts of a real store through the built `vdiskfs` binary.
final class MountTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else { throw XCTSkip("no /dev/fuse") }
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: VDiskfsBinary.path), "no binary at \(VDiskfsBinary.path)")
    }

    override class func setUp() {
        super.setUp()
        print("MountTests: testing \(VDiskfsBinary.path)")
    }

    /// No test may leave a vdiskfs mount of a test store behind.
    override class func tearDown() {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let leaked = text.split(separator: "\n").filter { $0.contains("fuse.vdiskfs") && $0.contains("/tmp/vdiskfs-mt-") }
        XCTAssertTrue(leaked.isEmpty, "leaked mounts:\n\(leaked.joined(separator: "\n"))")
        super.tearDown()
    }

    // MARK: data

    func testCopyInRoundTripsThroughRemountAndExport() throws {
        let m = try MountFixture(self)
        let original = m.directory + "/original.img"
        try randomBytes(9 << 20 + 12345, seed: 1).write(to: URL(fileURLWithPath: original))
        try m.mount()
        try sh("cp \(original) \(m.path("disk.img"))")
        try sh("cmp \(original) \(m.path("disk.img"))")
        try m.remount()
        try sh("cmp \(original) \(m.path("disk.img"))")
        try m.unmount()
        let r = try vdiskfs("export", "-s", m.store, "disk.img", m.directory + "/exported.img")
        XCTAssertEqual(r.status, 0, r.stderr)
        try sh("cmp \(original) \(m.directory)/exported.img")
    }

    func testUnalignedAndPartialBlockWritesMatchAModel() throws {
        let m = try MountFixture(self)
        try m.mount()
        let model = m.directory + "/model.img"
        let image = m.path("u.img")
        for p in [model, image] { XCTAssertTrue(FileManager.default.createFile(atPath: p, contents: nil)) }
        var rng = SplitMix(seed: 7)
        for i in 0..<300 {
            let offset = Int(rng.next() % (3 << 20))
            let length = 1 + Int(rng.next() % (i % 10 == 0 ? 300_000 : 9000))
            let data = randomBytes(length, seed: UInt64(i) + 100)
            for p in [model, image] { try pwrite(p, data, at: offset) }
        }
        try sh("cmp \(model) \(image)")
        try m.remount()
        try sh("cmp \(model) \(image)")
    }

    func testTruncateGrowsWithZerosAndShrinksDurably() throws {
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("t.img")
        let data = randomBytes(1 << 20, seed: 3)
        try data.write(to: URL(fileURLWithPath: image))
        XCTAssertEqual(truncate(image, 5 << 20), 0)
        XCTAssertEqual(try size(image), 5 << 20)
        var back = try Data(contentsOf: URL(fileURLWithPath: image))
        XCTAssertEqual(back.prefix(1 << 20), data)
        XCTAssertTrue(back.dropFirst(1 << 20).allSatisfy { $0 == 0 })
        XCTAssertEqual(truncate(image, 1000), 0)
        XCTAssertEqual(try size(image), 1000)
        XCTAssertEqual(truncate(image, 8192), 0)
        back = try Data(contentsOf: URL(fileURLWithPath: image))
        XCTAssertEqual(back.prefix(1000), data.prefix(1000))
        XCTAssertTrue(back.dropFirst(1000).allSatisfy { $0 == 0 }, "bytes past a shrink must read as zeros after growing again")
        try m.remount()
        XCTAssertEqual(try size(image), 8192)
        back = try Data(contentsOf: URL(fileURLWithPath: image))
        XCTAssertEqual(back.prefix(1000), data.prefix(1000))
        XCTAssertTrue(back.dropFirst(1000).allSatisfy { $0 == 0 })
    }

    // MARK: names

    func testDirectoriesRenameUnlinkRmdir() throws {
        let m = try MountFixture(self)
        try m.mount()
        XCTAssertEqual(mkdir(m.path("vms"), 0o755), 0)
        XCTAssertEqual(mkdir(m.path("vms/old"), 0o700), 0)
        try Data("hello".utf8).write(to: URL(fileURLWithPath: m.path("vms/a.img")))
        XCTAssertEqual(rename(m.path("vms/a.img"), m.path("vms/old/b.img")), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: m.path("vms/a.img")))
        XCTAssertEqual(try String(contentsOfFile: m.path("vms/old/b.img"), encoding: .utf8), "hello")
        XCTAssertEqual(rmdir(m.path("vms/old")), -1)
        XCTAssertEqual(errno, ENOTEMPTY)
        XCTAssertEqual(rename(m.path("vms/old"), m.path("archive")), 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m.mountpoint).sorted(), ["archive", "vms"])
        var st = stat()
        XCTAssertEqual(stat(m.path("archive"), &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o700)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFDIR)
        XCTAssertEqual(mknod(m.path("fifo"), S_IFIFO | 0o644, 0), -1, "only images can be created")
        try m.remount()
        XCTAssertEqual(try String(contentsOfFile: m.path("archive/b.img"), encoding: .utf8), "hello")
        XCTAssertEqual(unlink(m.path("archive/b.img")), 0)
        XCTAssertEqual(rmdir(m.path("archive")), 0)
        XCTAssertEqual(rmdir(m.path("vms")), 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m.mountpoint), [])
        try m.remount()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m.mountpoint), [])
    }

    func testUnlinkedOpenFileStaysUsableUntilClosed() throws {
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("gone.img")
        try randomBytes(200_000, seed: 9).write(to: URL(fileURLWithPath: image))
        let fd = open(image, O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(unlink(image), 0)
        var buf = [UInt8](repeating: 0, count: 4)
        XCTAssertEqual(Glibc.pwrite(fd, [UInt8]([1, 2, 3, 4]), 4, 150_000), 4)
        XCTAssertEqual(pread(fd, &buf, 4, 150_000), 4)
        XCTAssertEqual(buf, [1, 2, 3, 4])
        close(fd)
        XCTAssertFalse(FileManager.default.fileExists(atPath: image))
    }

    func testOpenCloseUnderCacheDropsKeepsLookupCountsRight() throws {
        let m = try MountFixture(self)
        try m.mount()
        XCTAssertEqual(mkdir(m.path("d"), 0o755), 0)
        for i in 0..<20 { try Data("x\(i)".utf8).write(to: URL(fileURLWithPath: m.path("d/f\(i)"))) }
        for round in 0..<5 {
            _ = try FileManager.default.contentsOfDirectory(atPath: m.path("d"))
            for i in 0..<20 {
                XCTAssertEqual(try String(contentsOfFile: m.path("d/f\(i)"), encoding: .utf8), "x\(i)")
                if round == 2 { XCTAssertEqual(rename(m.path("d/f\(i)"), m.path("d/g\(i)")), 0); XCTAssertEqual(rename(m.path("d/g\(i)"), m.path("d/f\(i)")), 0) }
            }
            // Make the kernel forget the inodes (FORGET/BATCH_FORGET) between rounds.
            _ = try? sh("sync; echo 2 > /proc/sys/vm/drop_caches")
        }
        XCTAssertNotNil(m.daemonPID(), "the daemon died:\n\(m.log)")
    }

    // MARK: file system

    func testStatfs() throws {
        let m = try MountFixture(self)
        try m.mount()
        var s = statvfs()
        XCTAssertEqual(statvfs(m.mountpoint, &s), 0)
        XCTAssertEqual(s.f_bsize, 4096)
        XCTAssertGreaterThan(s.f_blocks, 0)
        XCTAssertLessThanOrEqual(s.f_bavail, s.f_blocks)
        XCTAssertEqual(s.f_namemax, 255)
        let df = try sh("df -P \(m.mountpoint)")
        XCTAssertTrue(df.contains(m.store), df)
    }

    /// Linux's rule for set-ID bits, which the mount applies itself (it takes
    /// FUSE_HANDLE_KILLPRIV_V2 so that writes cost one round trip): a write or truncate by
    /// someone other than root clears them (set-group-ID only when the group may execute), a
    /// write by root keeps them, chown clears them; the kernel's cached mode follows at once.
    func testWritesTruncatesAndChownClearSetIDBits() throws {
        let m = try MountFixture(self)
        try m.mount("-o", "allow_other")
        XCTAssertEqual(chmod(m.directory, 0o755), 0)
        let f = m.path("s.img")
        try sh("truncate -s 1M \(f)")
        func mode() throws -> String { try sh("stat -c %a \(f)").trimmingCharacters(in: .whitespacesAndNewlines) }
        func asNobody(_ command: String) throws { try sh("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '\(command)'") }
        try sh("chmod 6777 \(f)")
        try asNobody("echo x >> \(f)")
        XCTAssertEqual(try mode(), "777")
        try sh("chmod 6767 \(f)")
        try asNobody("echo x >> \(f)")
        XCTAssertEqual(try mode(), "2767")
        try sh("chmod 6777 \(f) && echo x >> \(f)")
        XCTAssertEqual(try mode(), "6777")
        try asNobody("truncate -s 100 \(f)")
        XCTAssertEqual(try mode(), "777")
        try sh("chmod 6777 \(f) && chown 65534 \(f)")
        XCTAssertEqual(try mode(), "777")
        try sh("chmod 6777 \(f)")
        try asNobody("echo x >> \(f)")
        try m.remount()
        XCTAssertEqual(try mode(), "777")
    }

    func testODirectAlignedWriteAndRead() throws {
        let m = try MountFixture(self)
        try m.mount()
        let source = m.directory + "/src"
        try randomBytes(4 << 20, seed: 11).write(to: URL(fileURLWithPath: source))
        try sh("dd if=\(source) of=\(m.path("direct.img")) bs=1M oflag=direct status=none")
        try sh("dd if=\(m.path("direct.img")) of=\(m.directory)/back bs=64k iflag=direct status=none && cmp \(source) \(m.directory)/back")
        // QEMU with cache=none (O_DIRECT) and its OFD image locks.
        if which("qemu-io") {
            try sh("qemu-io -f raw -n -c 'write -P 0x5a 512 1M' -c 'read -P 0x5a 512 1M' \(m.path("direct.img"))")
        }
        try m.remount()
        let back = try Data(contentsOf: URL(fileURLWithPath: m.path("direct.img")))
        let expected = try Data(contentsOf: URL(fileURLWithPath: source))
        XCTAssertEqual(back.count, expected.count)
        if which("qemu-io") {
            XCTAssertEqual(back[512..<(512 + (1 << 20))], Data(repeating: 0x5a, count: 1 << 20))
            XCTAssertEqual(back.prefix(512), expected.prefix(512))
            XCTAssertEqual(back.dropFirst(512 + (1 << 20)), expected.dropFirst(512 + (1 << 20)))
        } else {
            XCTAssertEqual(back, expected)
        }
    }

    func testLocksAreKeptByTheKernel() throws {
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("locked.img")
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20)))
        // flock: a second exclusive lock fails while the first is held.
        let r = try runProgram("/bin/sh", ["-c", "flock -n \(image) flock -n \(image) true"])
        XCTAssertEqual(r.status, 1, "the inner flock should have failed: \(r.stderr)")
        // OFD locks (what QEMU uses): a second open file description cannot take a conflicting lock.
        let a = open(image, O_RDWR), b = open(image, O_RDWR)
        XCTAssertEqual(ofdWriteLock(a), 0)
        XCTAssertEqual(ofdWriteLock(b), -1)
        XCTAssertTrue(errno == EAGAIN || errno == EACCES, "errno \(errno)")
        close(a)
        XCTAssertEqual(ofdWriteLock(b), 0, "closing the holder releases its lock")
        close(b)
        // QEMU itself: a running VM (cache=none, O_DIRECT) keeps a second writer out.
        guard which("qemu-system-x86_64") && which("qemu-io") else { return }
        let pidFile = m.directory + "/qemu.pid"
        try sh("qemu-system-x86_64 -machine pc -accel tcg -S -nodefaults -display none -daemonize -pidfile \(pidFile) "
               + "-drive file=\(image),format=raw,if=none,id=d0,cache=none -device virtio-blk-pci,drive=d0")
        let qemu = pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        defer { if qemu > 0 { kill(qemu, SIGTERM); _ = m.waitForExit(qemu) } }
        let second = try runProgram("/usr/bin/env", ["qemu-io", "-f", "raw", "-c", "read 0 512", image])
        XCTAssertNotEqual(second.status, 0)
        XCTAssertTrue(second.stderr.contains("Failed to get \"write\" lock"), second.stderr)
    }

    private func ofdWriteLock(_ fd: Int32) -> Int32 {
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        let F_OFD_SETLK: Int32 = 37
        return withUnsafeMutablePointer(to: &lock) { fcntl(fd, F_OFD_SETLK, UnsafeMutableRawPointer($0)) }
    }

    func testSeekDataHoleAndPunchHole() throws {
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("sparse.img")
        try sh("xfs_io -f -c 'truncate 16m' -c 'pwrite -S 0x61 1m 1m' -c 'pwrite -S 0x62 8m 64k' \(image) >/dev/null")
        func seeks() throws -> String { try sh("xfs_io -c 'seek -a -r 0' \(image)") }
        var out = try seeks()
        XCTAssertTrue(out.contains("HOLE\t0") && out.contains("DATA\t1048576") && out.contains("HOLE\t2097152")
                      && out.contains("DATA\t8388608") && out.contains("HOLE\t8454144"), out)
        try sh("xfs_io -c 'fpunch 1m 512k' -c 'fzero 8m 4k' \(image)")
        let data = try Data(contentsOf: URL(fileURLWithPath: image))
        XCTAssertEqual(data.count, 16 << 20)
        XCTAssertTrue(data[(1 << 20)..<(1 << 20 + 512 << 10)].allSatisfy { $0 == 0 })
        XCTAssertTrue(data[(1 << 20 + 512 << 10)..<(2 << 20)].allSatisfy { $0 == 0x61 })
        XCTAssertTrue(data[(8 << 20)..<(8 << 20 + 4096)].allSatisfy { $0 == 0 })
        XCTAssertTrue(data[(8 << 20 + 4096)..<(8 << 20 + 64 << 10)].allSatisfy { $0 == 0x62 })
        out = try seeks()
        XCTAssertTrue(out.contains("DATA\t1572864"), out)
        try m.remount()
        // Allocation shrinks with the punched range (checked once flushed: dirty blocks count as allocated).
        var st = stat()
        XCTAssertEqual(stat(image, &st), 0)
        XCTAssertLessThanOrEqual(st.st_blocks * 512, (512 << 10) + (64 << 10))
        out = try seeks()
        XCTAssertTrue(out.contains("DATA\t1572864") && out.contains("HOLE\t2097152"), out)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: image)), data)
    }

    func testCopyFileRange() throws {
        let m = try MountFixture(self)
        try m.mount()
        let data = randomBytes(3 << 20 + 100, seed: 21)
        try data.write(to: URL(fileURLWithPath: m.path("a.img")))
        try sh("xfs_io -f -c 'copy_range -s 0 -d 4096 -l 2097152 \(m.path("a.img"))' \(m.path("b.img"))")
        let b = try Data(contentsOf: URL(fileURLWithPath: m.path("b.img")))
        XCTAssertEqual(b.count, 4096 + (2 << 20))
        XCTAssertEqual(b.dropFirst(4096), data.prefix(2 << 20))
    }

    // MARK: durability

    func testFsyncedDataSurvivesKill9() throws {
        let m = try MountFixture(self)
        try m.mount()
        let source = m.directory + "/src"
        try randomBytes(6 << 20 + 777, seed: 5).write(to: URL(fileURLWithPath: source))
        try sh("dd if=\(source) of=\(m.path("crash.img")) bs=256k conv=fsync status=none")
        guard let daemon = m.daemonPID() else { return XCTFail("no daemon") }
        XCTAssertEqual(kill(daemon, SIGKILL), 0)
        XCTAssertTrue(m.waitForExit(daemon))
        try m.unmount()
        try m.mount()
        try sh("cmp \(source) \(m.path("crash.img"))")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("export", "-s", m.store, "crash.img", m.directory + "/out").status, 0)
        try sh("cmp \(source) \(m.directory)/out")
    }

    func testSIGTERMFlushesAndUnmounts() throws {
        let m = try MountFixture(self)
        try m.mount()
        let source = m.directory + "/src"
        try randomBytes(2 << 20, seed: 8).write(to: URL(fileURLWithPath: source))
        try sh("cp \(source) \(m.path("t.img"))")
        guard let daemon = m.daemonPID() else { return XCTFail("no daemon") }
        XCTAssertEqual(kill(daemon, SIGTERM), 0)
        XCTAssertTrue(m.waitForExit(daemon), m.log)
        XCTAssertFalse(m.isMounted, "SIGTERM must unmount")
        XCTAssertEqual(try vdiskfs("export", "-s", m.store, "t.img", m.directory + "/out").status, 0)
        try sh("cmp \(source) \(m.directory)/out")
    }

    func testFioVerifySurvivesRemount() throws {
        guard which("fio") else { throw XCTSkip("fio is not installed") }
        let m = try MountFixture(self)
        try m.mount()
        let common = "--name=v --filename=\(m.path("fio.img")) --size=32m --bs=4k --rw=randwrite --verify=crc32c --randrepeat=1 --randseed=42"
        try sh("cd \(m.directory) && fio \(common) --ioengine=psync --do_verify=1 --output=/dev/null")
        try sh("cd \(m.directory) && fio \(common) --ioengine=libaio --direct=1 --iodepth=16 --do_verify=1 --output=/dev/null")
        try m.remount()
        try sh("cd \(m.directory) && fio \(common) --ioengine=psync --verify_only --output=/dev/null")
    }

    func testOSyncWritesSurviveKill9() throws {
        guard which("fio") else { throw XCTSkip("fio is not installed") }
        let m = try MountFixture(self)
        try m.mount()
        let common = "--name=s --filename=\(m.path("sync.img")) --size=8m --bs=4k --rw=randwrite --verify=crc32c --randrepeat=1 --randseed=9"
        try sh("cd \(m.directory) && fio \(common) --ioengine=psync --sync=1 --do_verify=0 --output=/dev/null")
        guard let daemon = m.daemonPID() else { return XCTFail("no daemon") }
        XCTAssertEqual(kill(daemon, SIGKILL), 0)
        XCTAssertTrue(m.waitForExit(daemon))
        try m.unmount()
        try m.mount()
        try sh("cd \(m.directory) && fio \(common) --ioengine=psync --verify_only --output=/dev/null")
    }

    // MARK: bad input

    func testBadInputGivesOneLineErrors() throws {
        let m = try MountFixture(self)
        var r = try vdiskfs("mount", "-s", m.store, m.directory + "/nowhere")
        assertOneLine(r, 19, contains: "does not exist")
        XCTAssertTrue(FileManager.default.createFile(atPath: m.directory + "/file", contents: nil))
        r = try vdiskfs("mount", "-s", m.store, m.directory + "/file")
        assertOneLine(r, 19, contains: "not a directory")
        r = try vdiskfs("mount", "-s", m.directory + "/nostore", m.mountpoint)
        assertOneLine(r, 10, contains: "does not exist")
        r = try vdiskfs("mount", "-s", m.mountpoint, m.mountpoint)
        assertOneLine(r, 11, contains: "not a vdiskfs store")
        r = try vdiskfs("mount", "-s", m.store, m.mountpoint, "--cache-size", "lots")
        assertOneLine(r, 19, contains: "not a size")
        r = try vdiskfs("mount", "-s", m.store, m.mountpoint, "-o", "no_such_option")
        assertOneLine(r, 19, contains: "no_such_option")
        XCTAssertFalse(m.isMounted)
        try m.mount()
        let second = m.directory + "/second"
        try FileManager.default.createDirectory(atPath: second, withIntermediateDirectories: true)
        r = try vdiskfs("mount", "-s", m.store, second)
        assertOneLine(r, 13, contains: "in use")
        XCTAssertTrue(mountLines(at: second).isEmpty, "a locked store must not be mounted")
    }

    // MARK: helpers

    private func assertOneLine(_ r: ProgramResult, _ code: Int32, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, code, r.stderr, file: file, line: line)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "expected one line: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("vdiskfs: ") && r.stderr.contains(contains), r.stderr, file: file, line: line)
    }

    private func which(_ tool: String) -> Bool {
        (try? runProgram("/bin/sh", ["-c", "command -v \(tool)"]).status) == 0
    }

    private func size(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? -1
    }

    private func pwrite(_ path: String, _ data: Data, at offset: Int) throws {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let n = data.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        XCTAssertEqual(n, data.count)
    }
}

/// A small deterministic generator for test data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `count` pseudo-random bytes (incompressible, so every block is distinct).
func randomBytes(_ count: Int, seed: UInt64) -> Data {
    var rng = SplitMix(seed: seed)
    var data = Data(count: (count + 7) / 8 * 8)
    data.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for i in words.indices { words[i] = rng.next() }
    }
    return data.prefix(count)
}

final class SnapshotMountTests: XCTestCase {
    func testSnapshotsThroughTheMount() throws {
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("vms/web.img")
        try sh("mkdir \(m.path("vms")) && head -c 3000000 /dev/urandom > \(image) && cp \(image) \(m.directory)/v1")
        try sh("mkdir \(m.path(".snapshots/monday"))")
        try sh("head -c 100000 /dev/urandom | dd of=\(image) bs=4096 seek=10 conv=notrunc status=none")
        XCTAssertEqual(try sh("ls \(m.path(".snapshots"))"), "monday\n")
        XCTAssertFalse(try sh("ls -a \(m.mountpoint)").contains(".snapshots"), "hidden unless asked for")
        let old = m.path(".snapshots/monday/vms/web.img")
        try sh("cmp \(old) \(m.directory)/v1")
        // Every write path into a snapshot fails with EROFS, not EACCES.
        for command in ["sh -c 'echo x >> \(old)'", "truncate -s 0 \(old)", "rm \(old)", "mv \(old) \(m.path("x.img"))",
                        "chmod 600 \(old)", "touch \(m.path(".snapshots/monday/new.img"))", "mkdir \(m.path(".snapshots/monday/d"))"] {
            let r = try runProgram("/bin/sh", ["-c", command + " 2>&1"])
            XCTAssertNotEqual(r.status, 0, command)
            XCTAssertTrue(r.stdout.contains("Read-only file system"), "\(command): \(r.stdout)")
        }
        // cp out of a snapshot, then the snapshot survives a remount; rmdir deletes it.
        try sh("cp \(old) \(m.path("restored.img")) && cmp \(m.path("restored.img")) \(m.directory)/v1")
        try m.remount()
        try sh("cmp \(m.path(".snapshots/monday/vms/web.img")) \(m.directory)/v1")
        try sh("rmdir \(m.path(".snapshots/monday"))")
        XCTAssertEqual(try sh("ls \(m.path(".snapshots"))"), "")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }
}

final class ControlChannelTests: XCTestCase {
    /// `vdiskfs snapshot` on a mounted store asks the mount: dirty data is in the snapshot.
    func testSnapshotCommandWhileMounted() throws {
        let m = try MountFixture(self)
        try m.mount()
        try sh("head -c 500000 /dev/urandom > \(m.path("a.img")) && cp \(m.path("a.img")) \(m.directory)/a.orig")
        let r = try vdiskfs("snapshot", "-s", m.store, "--label", "live")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "live\n")
        let again = try vdiskfs("snapshot", "-s", m.store, "--label", "live")
        XCTAssertEqual(again.status, 14, again.stderr)
        try sh("cmp \(m.path(".snapshots/live/a.img")) \(m.directory)/a.orig")
        XCTAssertEqual(try vdiskfs("snapshot", "-s", m.store, "--delete", "live").status, 0)
        XCTAssertEqual(try sh("ls \(m.path(".snapshots"))"), "")
        // Commands that need the store itself still say it is locked.
        XCTAssertEqual(try vdiskfs("import", "-s", m.store, m.directory + "/a.orig", "b.img").status, 13)
        try m.unmount()
        XCTAssertFalse(FileManager.default.fileExists(atPath: m.store + "/control.sock"), "the socket goes with the mount")
    }
}

final class ScheduledSnapshotTests: XCTestCase {
    func testSnapshotEveryKeepsTheNewest() throws {
        let m = try MountFixture(self)
        try m.mount("--snapshot-every", "1s", "--keep-last", "2")
        try sh("echo hello > \(m.path("a.img"))")
        // Wait (bounded) until the schedule has taken and pruned a few.
        let deadline = Date().addingTimeInterval(20)
        var names: [String] = []
        var seen = Set<String>()
        while Date() < deadline {
            names = (try? FileManager.default.contentsOfDirectory(atPath: m.path(".snapshots"))) ?? []
            seen.formUnion(names)
            if seen.count >= 4 { break }
            usleep(200_000)
        }
        XCTAssertGreaterThanOrEqual(seen.count, 4, "snapshots taken: \(seen)")
        XCTAssertLessThanOrEqual(names.count, 2, "pruned to the newest two: \(names)")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }
}

/// Findings of a pjdfstest run, kept fixed.
final class POSIXDetailTests: XCTestCase {
    func testLongNamesDeepTreesAndDirectoryLinkCounts() throws {
        let m = try MountFixture(self)
        try m.mount()
        let long = String(repeating: "a", count: 256)
        for command in ["touch \(m.path(long))", "mkdir \(m.path(long))", "stat \(m.path(long))"] {
            let r = try runProgram("/bin/sh", ["-c", command + " 2>&1"])
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stdout.contains("File name too long"), "\(command): \(r.stdout)")
        }
        // A tree deeper than 4096 bytes in all, reached by relative paths.
        let c = String(repeating: "b", count: 200)
        // (bash: dash's cd gives up once its logical path passes PATH_MAX.)
        let deep = try runProgram("/bin/bash", ["-c", "cd \(m.mountpoint) && mkdir deep && cd deep && for i in $(seq 30); do mkdir \(c) && cd \(c) || exit 1; done && echo ok > f.img && cat f.img"])
        XCTAssertEqual(deep.status, 0, deep.stderr)
        XCTAssertEqual(deep.stdout, "ok\n")
        // A directory's link count is 2 plus its subdirectories.
        try sh("mkdir -p \(m.path("t/a/b")) \(m.path("t/a/c"))")
        XCTAssertEqual(try sh("stat -c %h \(m.path("t/a"))"), "4\n")
        XCTAssertEqual(try sh("stat -c %h \(m.path("t/a/b"))"), "2\n")
    }
}

final class UnmountCommandTests: XCTestCase {
    /// `vdiskfs unmount` returns only after the final flush: the store is free at once.
    func testUnmountWaitsForTheFinalFlush() throws {
        let m = try MountFixture(self)
        try m.mount()
        try sh("head -c 30000000 /dev/urandom > \(m.path("a.img"))")
        let r = try vdiskfs("unmount", m.mountpoint)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(m.isMounted)
        // No waiting needed: the store is unlocked and holds the data.
        let ls = try vdiskfs("ls", "-s", m.store, "--json")
        XCTAssertEqual(ls.status, 0, ls.stderr)
        XCTAssertTrue(ls.stdout.contains("\"size\" : 30000000"), ls.stdout)
        XCTAssertEqual(try vdiskfs("unmount", m.directory).status, 19, "not a vdiskfs mount")
    }

    /// The store (and its journal) on a 64 MiB tmpfs that fills up: the writer gets ENOSPC,
    /// fsynced data stays readable, unmount says the final flush failed (exit 17), the next
    /// mount comes up on the still-full disk and serves the journal, and once space is freed
    /// everything reaches the store.
    func testFullDiskKeepsAcknowledgedWritesAndTheMountServing() throws {
        let m = try MountFixture(self)
        let saved = m.directory + "/store-copy"
        try sh("cp -a \(m.store) \(saved) && mount -t tmpfs -o size=64M vdiskfs-test \(m.store) && cp -a \(saved)/. \(m.store)/")
        defer { _ = try? runProgram("/usr/bin/env", ["umount", "-l", m.store]) }
        try m.mount()
        let acked = m.directory + "/acked.bin"
        try sh("head -c 4194304 /dev/urandom > \(acked) && dd if=\(acked) of=\(m.path("acked.img")) bs=1M conv=fsync status=none")
        let fill = try runProgram("/bin/sh", ["-c", "head -c 209715200 /dev/urandom | dd of=\(m.path("fill.img")) bs=1M iflag=fullblock conv=fsync status=none"])
        XCTAssertNotEqual(fill.status, 0, "200 MiB fit on a 64 MiB disk")
        XCTAssertTrue(fill.stderr.contains("No space left on device"), fill.stderr)
        try sh("cmp \(acked) \(m.path("acked.img"))")

        // The final flush cannot write packs: the mount goes, the journal stays.
        let u = try vdiskfs("unmount", m.mountpoint)
        XCTAssertEqual(u.status, 17, u.stderr)
        XCTAssertTrue(u.stderr.contains("final flush failed") && u.stderr.contains("no space left"), u.stderr)
        XCTAssertEqual(u.stderr.split(separator: "\n").count, 1, u.stderr)
        XCTAssertFalse(m.isMounted)

        // Still full: the mount comes up anyway and serves what the journal holds.
        try m.mount()
        try sh("cmp \(acked) \(m.path("acked.img"))")
        let write = try runProgram("/bin/sh", ["-c", "head -c 1048576 /dev/urandom | dd of=\(m.path("fill.img")) bs=1M conv=notrunc,fsync status=none"])
        XCTAssertNotEqual(write.status, 0, "a write to a full disk was acknowledged")

        // Space freed: the final flush moves everything into the store.
        try sh("mount -o remount,size=512M \(m.store)")
        let u2 = try vdiskfs("unmount", m.mountpoint)
        XCTAssertEqual(u2.status, 0, u2.stderr + "\nlog:\n" + m.log)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m.store + "/journal"), [])
        let verify = try m.cli("verify")
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
        try sh("\(VDiskfsBinary.path) export -s \(m.store) acked.img \(m.directory)/acked.out && cmp \(acked) \(m.directory)/acked.out")
    }
}

final class SnapshotConsistencyTests: XCTestCase {
    /// Two processes write: one counts up in a.img, the other copies what it reads there
    /// into b.img, so at every instant b <= a. Every snapshot must show b <= a too: a
    /// snapshot that caught b's newer value with a's older one would not be one instant.
    func testSnapshotsAreConsistentAcrossImagesUnderConcurrentWriters() throws {
        let m = try MountFixture(self)
        try m.mount()
        let a = m.path("a.img"), b = m.path("b.img")
        try sh("printf '%020d' 0 > \(a) && printf '%020d' 0 > \(b)")
        let writerA = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); printf '%020d' $i | dd of=\(a) conv=notrunc status=none; done"
        let writerB = "while [ ! -e \(m.directory)/stop ]; do v=$(head -c 20 \(a)); printf '%s' $v | dd of=\(b) conv=notrunc status=none; done"
        let pa = Process(), pb = Process()
        for (p, script) in [(pa, writerA), (pb, writerB)] {
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", script]
            try p.run()
        }
        var taken = 0
        while pa.isRunning && taken < 30 {
            try sh("mkdir \(m.path(".snapshots/s\(taken)"))")
            taken += 1
            usleep(50_000)
        }
        pa.waitUntilExit()
        FileManager.default.createFile(atPath: m.directory + "/stop", contents: nil)
        pb.waitUntilExit()
        XCTAssertGreaterThan(taken, 3)
        var sawProgress = false
        for i in 0..<taken {
            let va = Int(try String(contentsOfFile: m.path(".snapshots/s\(i)/a.img"), encoding: .utf8))!
            let vb = Int(try String(contentsOfFile: m.path(".snapshots/s\(i)/b.img"), encoding: .utf8))!
            XCTAssertLessThanOrEqual(vb, va, "snapshot s\(i): b=\(vb) is newer than a=\(va)")
            if vb > 0 { sawProgress = true }
        }
        XCTAssertTrue(sawProgress, "the writers ran while snapshots were taken")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }
}

final class MountedGCTests: XCTestCase {
    func testGCOnAMountedStoreUnderWrites() throws {
        let m = try MountFixture(self)
        try m.mount()
        try sh("head -c 40000000 /dev/urandom > \(m.path("junk.img")) && head -c 8000000 /dev/urandom > \(m.path("keep.img")) && cp \(m.path("keep.img")) \(m.directory)/keep.orig")
        // An unlinked image still open must stay readable through gc.
        let held = open(m.path("keep.img"), O_RDONLY)
        XCTAssertGreaterThanOrEqual(held, 0)
        try sh("mv \(m.path("keep.img")) \(m.path("kept.img")) && cp \(m.path("kept.img")) \(m.path("copy.img")) && rm \(m.path("kept.img")) \(m.path("junk.img"))")
        // A verifying write load runs while gc collects.
        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        fio.arguments = ["--name=w", "--filename=\(m.path("live.img"))", "--size=16m", "--bs=4k", "--rw=randwrite", "--verify=crc32c",
                         "--ioengine=psync", "--fsync=32", "--do_verify=1", "--verify_state_save=0", "--output=/dev/null"]
        try fio.run()
        let gc = try vdiskfs("gc", "-s", m.store, "--threshold", "0.9", "--json")
        XCTAssertEqual(gc.status, 0, gc.stderr)
        let plan = try JSONSerialization.jsonObject(with: Data(gc.stdout.utf8)) as? [String: Any]
        XCTAssertGreaterThan(plan?["bytes_to_free"] as? Int ?? 0, 30_000_000, "junk.img's 40 MB are collected: \(gc.stdout)")
        fio.waitUntilExit()
        XCTAssertEqual(fio.terminationStatus, 0, "fio verify failed while gc ran")
        try sh("cmp \(m.path("copy.img")) \(m.directory)/keep.orig")
        var buf = [UInt8](repeating: 0, count: 8_000_000)
        XCTAssertEqual(pread(held, &buf, buf.count, 0), buf.count)
        XCTAssertEqual(Data(buf), try Data(contentsOf: URL(fileURLWithPath: m.directory + "/keep.orig")))
        close(held)
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
        let after = Int(try sh("du -sb \(m.store)/packs | cut -f1").trimmingCharacters(in: .whitespacesAndNewlines))!
        XCTAssertLessThan(after, 40_000_000, "only keep (8 MB) and live.img (16 MB) remain")
    }
}
