import Foundation
import XCTest

/// `vdiskfs rollback` and `vdiskfs trim` on a mounted store: done by the mount through its
/// control socket, refused (exit 22) while the image is open for writing there, and readers
/// of the mount (even ones holding the image open, with its pages cached) see the new content.
final class RollbackMountedTests: XCTestCase {
    /// Reads `count` bytes at 0 through `fd` (fewer at end of file).
    func readAll(_ fd: Int32, _ count: Int) -> Data {
        var buf = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(done)) }
            if n <= 0 { break }
            done += n
        }
        return Data(buf[0..<done])
    }

    func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    func size(_ fd: Int32) -> Int {
        var st = stat()
        XCTAssertEqual(fstat(fd, &st), 0)
        return Int(st.st_size)
    }

    /// A failed command: `code`, one line on stderr, no crash.
    func assertOneLineError(_ r: ProgramResult, code: Int32, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, code, r.stderr, file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("vdiskfs: "), r.stderr, file: file, line: line)
    }

    func testRollbackWhileMountedRestoresTheSnapshotForEveryReader() throws {
        let m = try MountFixture(self)
        let d = m.directory
        // v1 in the snapshot; v2 (2 MiB changed, 1 MiB longer) live.
        try sh("head -c 8388608 /dev/urandom > \(d)/v1 && head -c 4194304 /dev/urandom > \(d)/b.orig")
        try sh("head -c 2097152 /dev/urandom > \(d)/patch && head -c 1048576 /dev/urandom > \(d)/tail")
        try sh("cp \(d)/v1 \(d)/v2 && dd if=\(d)/patch of=\(d)/v2 bs=1M seek=3 conv=notrunc status=none && cat \(d)/tail >> \(d)/v2")
        XCTAssertEqual(try vdiskfs("import", "-s", m.store, "\(d)/v1", "vms/a.img").status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", m.store, "\(d)/b.orig", "b.img").status, 0)
        XCTAssertEqual(try vdiskfs("snapshot", "-s", m.store, "--label", "before").status, 0)
        XCTAssertEqual(try vdiskfs("rm", "-s", m.store, "vms/a.img").status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", m.store, "\(d)/v2", "vms/a.img").status, 0)
        let v1 = try contents("\(d)/v1"), v2 = try contents("\(d)/v2")
        try m.mount()
        // A reader holds the image open with v2 in the kernel's page cache and attributes.
        let reader = open(m.path("vms/a.img"), O_RDONLY)
        XCTAssertGreaterThanOrEqual(reader, 0)
        XCTAssertEqual(readAll(reader, v2.count), v2)
        XCTAssertEqual(size(reader), v2.count)   // attributes fresh: cached for the next second

        let r = try vdiskfs("rollback", "-s", m.store, "vms/a.img", "--to", "before")
        XCTAssertEqual(r.status, 0, "\(r.stderr)\nlog:\n\(m.log)")
        XCTAssertEqual(r.stderr, "")
        // The open reader sees the snapshot's size and bytes, not what the kernel cached.
        XCTAssertEqual(size(reader), v1.count)
        XCTAssertEqual(readAll(reader, v2.count), v1)
        close(reader)   // an open file keeps the mount busy
        try sh("cmp \(m.path("vms/a.img")) \(m.path(".snapshots/before/vms/a.img"))")
        try sh("cmp \(m.path("vms/a.img")) \(d)/v1")
        try sh("cmp \(m.path("b.img")) \(d)/b.orig")

        // Dirty blocks (written, not fsynced, still in the journal) are flushed first and
        // replaced by the snapshot's version; they never come back after it.
        try sh("dd if=\(d)/patch of=\(m.path("vms/a.img")) bs=1M seek=1 conv=notrunc status=none && cat \(d)/tail >> \(m.path("vms/a.img"))")
        XCTAssertEqual(try vdiskfs("rollback", "-s", m.store, "vms/a.img", "--to", "before").status, 0)
        try sh("cmp \(m.path("vms/a.img")) \(d)/v1")
        // An image removed since the snapshot comes back.
        try sh("rm \(m.path("b.img"))")
        XCTAssertEqual(try vdiskfs("rollback", "-s", m.store, "b.img", "--to", "before").status, 0)
        try sh("cmp \(m.path("b.img")) \(d)/b.orig")
        // Unknown image or snapshot: exit 15 through the mount too.
        assertOneLineError(try vdiskfs("rollback", "-s", m.store, "nope.img", "--to", "before"), code: 15)
        assertOneLineError(try vdiskfs("rollback", "-s", m.store, "vms/a.img", "--to", "nope"), code: 15)
        try m.remount()
        try sh("cmp \(m.path("vms/a.img")) \(d)/v1")
        try sh("cmp \(m.path("b.img")) \(d)/b.orig")
        // The image takes writes after the rollback.
        try sh("dd if=\(d)/patch of=\(m.path("vms/a.img")) bs=1M seek=5 conv=notrunc,fsync status=none")
        try sh("cp \(d)/v1 \(d)/v3 && dd if=\(d)/patch of=\(d)/v3 bs=1M seek=5 conv=notrunc status=none")
        try sh("cmp \(m.path("vms/a.img")) \(d)/v3")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
        XCTAssertEqual(try vdiskfs("export", "-s", m.store, "vms/a.img", "\(d)/out").status, 0)
        try sh("cmp \(d)/out \(d)/v3")
        XCTAssertEqual(try vdiskfs("export", "-s", m.store, "@before/vms/a.img", "\(d)/snap").status, 0)
        try sh("cmp \(d)/snap \(d)/v1")
    }

    func testRollbackAndTrimAreRefusedWhileTheImageIsOpenForWriting() throws {
        let m = try MountFixture(self)
        let d = m.directory
        try sh("head -c 4194304 /dev/urandom > \(d)/v1 && head -c 1048576 /dev/urandom > \(d)/patch")
        XCTAssertEqual(try vdiskfs("import", "-s", m.store, "\(d)/v1", "a.img").status, 0)
        try m.mount()
        XCTAssertEqual(try vdiskfs("snapshot", "-s", m.store, "--label", "before").status, 0)
        try sh("dd if=\(d)/patch of=\(m.path("a.img")) bs=1M seek=2 conv=notrunc,fsync status=none")
        try sh("cp \(d)/v1 \(d)/v2 && dd if=\(d)/patch of=\(d)/v2 bs=1M seek=2 conv=notrunc status=none")

        for flags in [O_RDWR, O_WRONLY] {
            let writer = open(m.path("a.img"), flags)
            XCTAssertGreaterThanOrEqual(writer, 0)
            for args in [["rollback", "-s", m.store, "a.img", "--to", "before"], ["trim", "-s", m.store, "a.img"]] {
                let r = try runProgram(VDiskfsBinary.path, args)
                assertOneLineError(r, code: 22)
                XCTAssertTrue(r.stderr.contains("a.img") && r.stderr.contains("open for writing on \(m.mountpoint)"), r.stderr)
            }
            close(writer)
            try sh("cmp \(m.path("a.img")) \(d)/v2")
        }
        // Another image open for writing, or this one open read-only, does not stop it.
        try sh("head -c 65536 /dev/urandom > \(m.path("other.img"))")
        let other = open(m.path("other.img"), O_RDWR)
        let reader = open(m.path("a.img"), O_RDONLY)
        XCTAssertGreaterThanOrEqual(other, 0)
        XCTAssertGreaterThanOrEqual(reader, 0)
        // The writer was closed just above: its release may still be on its way to the mount,
        // which waits a moment for it.
        let r = try vdiskfs("rollback", "-s", m.store, "a.img", "--to", "before")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(readAll(reader, 4 << 20), try contents("\(d)/v1"))
        close(reader)
        close(other)
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }

    func testTrimWhileMountedMatchesAnOfflineTrim() throws {
        let m = try MountFixture(self)
        let d = m.directory
        // An ext4 image whose free blocks hold stale data (mkfs over random bytes, no discard).
        try sh("mkdir -p \(d)/tree && seq 1 100000 > \(d)/tree/numbers && head -c 3000000 /dev/urandom > \(d)/tree/random")
        try sh("head -c 33554432 /dev/urandom > \(d)/disk.img && mkfs.ext4 -q -F -E nodiscard -b 4096 -d \(d)/tree \(d)/disk.img")
        // The expected result: the same image trimmed in a store of its own.
        let other = "\(d)/other"
        XCTAssertEqual(try vdiskfs("init", "-s", other).status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", other, "\(d)/disk.img", "disk.img", "--raw").status, 0)
        XCTAssertEqual(try vdiskfs("trim", "-s", other, "disk.img").status, 0)
        XCTAssertEqual(try vdiskfs("export", "-s", other, "disk.img", "\(d)/expected.img").status, 0)
        XCTAssertNotEqual(try contents("\(d)/expected.img"), try contents("\(d)/disk.img"), "trim changed something")

        XCTAssertEqual(try vdiskfs("import", "-s", m.store, "\(d)/disk.img", "vms/disk.img", "--raw").status, 0)
        try m.mount()
        let reader = open(m.path("vms/disk.img"), O_RDONLY)
        XCTAssertGreaterThanOrEqual(reader, 0)
        XCTAssertEqual(readAll(reader, 32 << 20), try contents("\(d)/disk.img"))
        XCTAssertEqual(size(reader), 32 << 20)
        let r = try vdiskfs("trim", "-s", m.store, "vms/disk.img", "--json")
        XCTAssertEqual(r.status, 0, "\(r.stderr)\nlog:\n\(m.log)")
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        XCTAssertGreaterThan(json?["freed_bytes"] as? Int ?? 0, 20_000_000, r.stdout)
        XCTAssertEqual(json?["name"] as? String, "vms/disk.img")
        XCTAssertEqual(readAll(reader, 32 << 20), try contents("\(d)/expected.img"))
        close(reader)
        try sh("cmp \(m.path("vms/disk.img")) \(d)/expected.img")
        try sh("e2fsck -fn \(m.path("vms/disk.img")) >/dev/null")
        let again = try vdiskfs("trim", "-s", m.store, "vms/disk.img")
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.contains(": 0 blocks"), again.stdout)
        assertOneLineError(try vdiskfs("trim", "-s", m.store, "nope.img"), code: 15)
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
        XCTAssertEqual(try vdiskfs("export", "-s", m.store, "vms/disk.img", "\(d)/out.img").status, 0)
        try sh("cmp \(d)/out.img \(d)/expected.img")
    }
}
