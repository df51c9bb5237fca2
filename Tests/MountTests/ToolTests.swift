import Foundation
import XCTest

/// Outside tools on a real mount (issue 3): qemu-io patterns on a raw image (buffered and
/// O_DIRECT with each AIO engine), qcow2 images made inside the mount checked by qemu-img
/// (also with a backing file inside a snapshot), and stress-ng's file stressors with --verify.
/// xfs_io's punch-hole, zero-range, SEEK_DATA/SEEK_HOLE and copy_range are in MountTests.
///
/// The tools are required (scripts/install-deps.sh installs them): a missing one fails the
/// test rather than skipping it.
final class ToolTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else { throw XCTSkip("no /dev/fuse") }
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: VDiskfsBinary.path), "no binary at \(VDiskfsBinary.path)")
    }

    // MARK: qemu-io on a raw image

    /// The same qemu-io commands on an image in the mount and on a model file outside it:
    /// every `read -P` passes on the mount, the files are byte-identical, and after a remount
    /// the final patterns read back, buffered and O_DIRECT.
    func testQemuIORawPatternsBufferedDirectAndAfterRemount() throws {
        try require("qemu-io", "qemu-img")
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("raw.img"), model = m.directory + "/model.img"
        for f in [image, model] { try sh("qemu-img create -q -f raw \(f) 64M") }
        let M = 1 << 20
        // Buffered (qemu's default cache=writeback, threads AIO): whole image, then unaligned
        // writes, vectored I/O, the last byte, concurrent AIO, write-zeroes and discard.
        let buffered = [
            "write -P 0x5a 0 64M", "read -P 0x5a 0 64M",
            "write -P 0xa5 4095 12289", "read -P 0x5a 0 4095", "read -P 0xa5 4095 12289", "read -P 0x5a 16384 1M",
            "writev -P 0x66 \(M - 3) 7 4096 65531", "readv -P 0x66 \(M - 3) 69634", "read -P 0x5a \(M + 69631) 1M",
            "write -P 0x01 \(64 * M - 1) 1", "read -P 0x01 \(64 * M - 1) 1", "read -P 0x5a \(64 * M - 2) 1",
            "aio_write -P 0x77 8M 1M", "aio_write -P 0x78 9M 4097", "aio_flush", "read -P 0x77 8M 1M", "read -P 0x78 9M 4097",
            "read -P 0x5a \(9 * M + 4097) 8191",
            "write -z 12M 1M", "read -P 0 12M 1M",
            "write -z \(13 * M + 1) 5000", "read -P 0x5a \(13 * M) 1", "read -P 0 \(13 * M + 1) 5000", "read -P 0x5a \(13 * M + 5001) 4096",
            "discard 16M 2M", "flush",
        ]
        try qemuIO(image, buffered)
        try qemuIO(model, buffered, check: false)
        // O_DIRECT (cache=none), once per AIO engine, each in its own region: aligned and
        // unaligned (qemu bounces those through read-modify-write), 512-byte and queued writes.
        var engines = ["native", "threads"]
        if (try runProgram("qemu-io", ["-f", "raw", "-n", "-i", "io_uring", "-c", "read 0 512", model])).status == 0 {
            engines.insert("io_uring", at: 0)
        } else {
            print("ToolTests: io_uring does not work here (not on a local file either); native and threads only")
        }
        var finalReads = [
            "read -P 0x5a 0 4095", "read -P 0xa5 4095 12289", "read -P 0x66 \(M - 3) 69634", "read -P 0x77 8M 1M",
            "read -P 0x78 9M 4097", "read -P 0 12M 1M", "read -P 0 \(13 * M + 1) 5000", "read -P 0x01 \(64 * M - 1) 1",
            "read -P 0x5a 24M 8M",
        ]
        for (i, engine) in engines.enumerated() {
            let base = (40 + 8 * i) * M, a = 0x30 + i, b = 0xc0 + i, c = 0x90 + i, d = 0xe0 + i
            let direct = [
                "write -P \(a) \(base) 4M", "read -P \(a) \(base) 4M",
                "write -P \(b) \(base + 4095) 12289", "read -P \(a) \(base) 4095", "read -P \(b) \(base + 4095) 12289",
                "read -P \(a) \(base + 16384) \(4 * M - 16384)",
                "aio_write -P \(c) \(base + 4 * M) 512", "aio_write -P \(d) \(base + 4 * M + 512) 1M",
                "aio_write -P \(c) \(base + 6 * M) 64k", "aio_write -P \(d) \(base + 6 * M + 65536) 64k", "aio_flush",
                "read -P \(c) \(base + 4 * M) 512", "read -P \(d) \(base + 4 * M + 512) 1M", "flush",
            ]
            try qemuIO(image, direct, flags: ["-n", "-i", engine])
            try qemuIO(model, direct, flags: ["-n", "-i", engine], check: false)
            finalReads += ["read -P \(a) \(base) 4095", "read -P \(b) \(base + 4095) 12289", "read -P \(d) \(base + 4 * M + 512) 1M",
                           "read -P \(c) \(base + 6 * M) 64k", "read -P \(d) \(base + 6 * M + 65536) 64k"]
        }
        try sh("cmp \(image) \(model)")
        try m.remount()
        try qemuIO(image, finalReads)
        try qemuIO(image, finalReads, flags: ["-n", "-i", "native"])
        try sh("cmp \(image) \(model)")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }

    // MARK: qcow2 inside the mount

    /// A 1 GiB qcow2 created in the mount, written by qemu-io (buffered and O_DIRECT), an
    /// internal snapshot taken and reverted, converted inside the mount: `qemu-img check` is
    /// clean and `qemu-img compare` finds it identical to the same image built outside and to
    /// a copy taken out of the mount, before and after a remount.
    func testQcow2InsideTheMountChecksCleanAndComparesEqual() throws {
        try require("qemu-io", "qemu-img")
        let m = try MountFixture(self)
        try m.mount()
        let image = m.path("vm.qcow2"), reference = m.directory + "/reference.qcow2", copy = m.directory + "/copy.qcow2"
        for f in [image, reference] { try sh("qemu-img create -q -f qcow2 \(f) 1G") }
        let M = 1 << 20
        let writes = [
            "write -P 0x11 0 8M", "write -P 0x22 100M 3M", "write -P 0x33 1020M 4M", "write -P 0x44 5000 70000",
            "write -z 2M 64k", "discard 3M 1M",
            "aio_write -P 0x55 500M 64k", "aio_write -P 0x56 \(500 * M + 65536) 192k", "aio_flush", "flush",
        ]
        let direct = ["write -P 0x66 300M 1M", "write -P 0x67 \(300 * M + 4095) 12289", "write -P 0x68 1023M 1M", "flush"]
        let reads = [
            "read -P 0x11 0 5000", "read -P 0x44 5000 70000", "read -P 0x11 75000 \(2 * M - 75000)", "read -P 0 2M 64k",
            "read -P 0x11 \(2 * M + 65536) \(M - 65536)", "read -P 0 3M 1M", "read -P 0x11 4M 4M", "read -P 0 8M 92M",
            "read -P 0x22 100M 3M", "read -P 0x66 300M 4095", "read -P 0x67 \(300 * M + 4095) 12289",
            "read -P 0x66 \(300 * M + 16384) \(M - 16384)", "read -P 0x55 500M 64k", "read -P 0x56 \(500 * M + 65536) 192k",
            "read -P 0x33 1020M 3M", "read -P 0x68 1023M 1M",
        ]
        for f in [image, reference] {
            try qemuIO(f, writes, format: "qcow2", check: f == image)
            try qemuIO(f, direct, format: "qcow2", flags: ["-n", "-i", "native"], check: f == image)
        }
        try qemuIO(image, reads, format: "qcow2")
        try qemuIO(image, reads, format: "qcow2", flags: ["-n", "-i", "native"])
        try check(image)
        try compare(image, reference)
        // A copy taken out of the mount is the same file and the same disk.
        try sh("cp \(image) \(copy) && cmp \(image) \(copy)")
        try check(copy)
        try compare(image, copy)
        // Internal snapshot: take, overwrite, revert (rewrites refcounts and L1/L2 tables in place).
        try sh("qemu-img snapshot -c before \(image)")
        try qemuIO(image, ["write -P 0x77 0 1M", "write -P 0x78 700M 2M"], format: "qcow2")
        try check(image)
        try sh("qemu-img snapshot -a before \(image)")
        XCTAssertTrue(try sh("qemu-img snapshot -l \(image)").contains("before"))
        try check(image)
        try compare(image, reference)
        // qemu-img convert from the mount into the mount.
        try sh("qemu-img convert -f qcow2 -O qcow2 \(image) \(m.path("converted.qcow2"))")
        try check(m.path("converted.qcow2"))
        try compare(m.path("converted.qcow2"), reference, strict: false)  // convert leaves zeroed clusters unallocated
        try m.remount()
        try check(image)
        try compare(image, reference)
        try compare(image, copy, strict: false)  // differs now by the internal snapshot only
        try qemuIO(image, reads, format: "qcow2")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }

    /// A qcow2 overlay whose backing file is an image in `.snapshots/NAME/`: reads come from
    /// the snapshot (not from the live image, which changed since), writes go to the overlay,
    /// `qemu-img commit` into the read-only backing file fails, and it all survives a remount.
    func testQcow2WithABackingFileInASnapshot() throws {
        try require("qemu-io", "qemu-img")
        let m = try MountFixture(self)
        try m.mount()
        let (overlay, backing) = try makeOverlayOnASnapshot(m)
        // The same overlay built outside the mount, on a local copy of the snapshot's image.
        let localBase = m.directory + "/base.img", localOverlay = m.directory + "/overlay.qcow2"
        try sh("cp \(backing) \(localBase) && qemu-img create -q -f qcow2 -b \(localBase) -F raw \(localOverlay)")
        try qemuIO(localOverlay, overlayWrites, format: "qcow2", check: false)
        let info = try sh("qemu-img info --backing-chain \(overlay)")
        XCTAssertTrue(info.contains("backing file: \(backing)"), info)
        try check(overlay)
        try compare(overlay, localOverlay)
        try qemuIO(overlay, overlayReads, format: "qcow2")
        try qemuIO(overlay, overlayReads, format: "qcow2", flags: ["-n", "-i", "native"])
        // Committing into the snapshot must fail, and leave both the snapshot and the overlay alone.
        let commit = try runProgram("qemu-img", ["commit", overlay])
        XCTAssertNotEqual(commit.status, 0, "qemu-img commit into a snapshot succeeded: \(commit.stdout)")
        XCTAssertTrue(commit.stderr.contains("Read-only file system"), commit.stderr)
        try sh("cmp \(backing) \(localBase)")
        try compare(overlay, localOverlay)
        try m.remount()
        try check(overlay)
        try qemuIO(overlay, overlayReads, format: "qcow2")
        try compare(overlay, localOverlay)
        try sh("cmp \(backing) \(localBase)")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
    }

    /// A VM's backing file in a snapshot must stay reachable however long the VM runs: here
    /// the kernel drops its cached dentries and inodes (memory pressure; `drop_caches` 2),
    /// which sends FORGET for the snapshot's nodes, and the overlay is opened again.
    func testSnapshotBackingFileStaysReachableAfterTheKernelForgetsIt() throws {
        try require("qemu-io", "qemu-img")
        let m = try MountFixture(self)
        try m.mount()
        let (overlay, backing) = try makeOverlayOnASnapshot(m)
        try sh("sync && echo 2 > /proc/sys/vm/drop_caches")
        XCTAssertEqual(try sh("ls \(m.path(".snapshots"))"), "gold\n")
        XCTAssertEqual(try sh("ls \(m.path(".snapshots/gold/vms"))"), "base.img\n")
        try sh("test -f \(backing)")
        try check(overlay)
        try qemuIO(overlay, overlayReads, format: "qcow2")
    }

    /// vms/base.img (32 MiB: 0x61 then 0x62) in snapshot `gold`, the live image overwritten
    /// with 0x7f since, and an overlay in the mount backed by the snapshot's copy, written
    /// with ``overlayWrites``.
    private func makeOverlayOnASnapshot(_ m: MountFixture) throws -> (overlay: String, backing: String) {
        let base = m.path("vms/base.img"), overlay = m.path("overlay.qcow2")
        let backing = m.path(".snapshots/gold/vms/base.img")
        try sh("mkdir \(m.path("vms")) && qemu-img create -q -f raw \(base) 32M")
        try qemuIO(base, ["write -P 0x61 0 16M", "write -P 0x62 16M 16M"])
        try sh("mkdir \(m.path(".snapshots/gold"))")
        try qemuIO(base, ["write -P 0x7f 0 32M"])
        try sh("qemu-img create -q -f qcow2 -b \(backing) -F raw \(overlay)")
        try qemuIO(overlay, overlayWrites, format: "qcow2")
        return (overlay, backing)
    }

    private let overlayWrites = ["write -P 0x99 8M 1M", "write -P 0x98 4095 12289", "write -P 0x97 \((16 << 20) - 100) 200", "flush"]
    private let overlayReads = [
        "read -P 0x61 0 4095", "read -P 0x98 4095 12289", "read -P 0x61 16384 \((8 << 20) - 16384)", "read -P 0x99 8M 1M",
        "read -P 0x61 9M \((7 << 20) - 100)", "read -P 0x97 \((16 << 20) - 100) 200", "read -P 0x62 \((16 << 20) + 100) \((16 << 20) - 100)",
    ]

    // MARK: stress-ng

    /// stress-ng's file stressors with --verify, at once on the mount: no failure, every
    /// stressor did work, nothing left behind, and the store verifies.
    func testStressNGFileStressorsVerify() throws {
        try require("stress-ng")
        let m = try MountFixture(self)
        try m.mount()
        let dir = m.path("stress")
        try sh("mkdir \(dir)")
        let stressors: [(name: String, options: [String])] = [
            ("hdd", ["--hdd", "2", "--hdd-opts", "wr-rnd,rd-rnd", "--hdd-bytes", "64M"]),
            ("iomix", ["--iomix", "1", "--iomix-bytes", "64M"]),
            ("fallocate", ["--fallocate", "1", "--fallocate-bytes", "64M"]),
            ("fpunch", ["--fpunch", "1"]),
            ("lockofd", ["--lockofd", "1"]),
            ("seek", ["--seek", "1", "--seek-punch", "--seek-size", "64M"]),
            ("copy-file", ["--copy-file", "1", "--copy-file-bytes", "128M"]),
            ("aiol", ["--aiol", "1"]),
            ("sync-file", ["--sync-file", "1", "--sync-file-bytes", "32M"]),
            ("mmap", ["--mmap", "1", "--mmap-file", "--mmap-bytes", "256K"]),
        ]
        let started = Date()
        let r = try runProgram("stress-ng", stressors.flatMap(\.options) + ["--verify", "-t", "20s", "--temp-path", dir, "--metrics-brief"])
        let output = r.stdout + r.stderr
        print("ToolTests: stress-ng ran \(String(format: "%.1f", Date().timeIntervalSince(started))) s\n\(output)")
        XCTAssertEqual(r.status, 0, output)
        XCTAssertTrue(output.contains("successful run completed"), output)
        XCTAssertFalse(output.contains(" fail: ") || output.lowercased().contains("verif"), output)
        for s in stressors {
            let line = output.split(separator: "\n").first { $0.contains("metrc:") && $0.split(separator: " ").dropFirst(3).first == Substring(s.name) }
            let ops = line.flatMap { $0.split(separator: " ").dropFirst(4).first }.flatMap { Int($0) } ?? 0
            XCTAssertGreaterThan(ops, 0, "stress-ng \(s.name) did no work:\n\(output)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "stress-ng left files behind")
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", m.store).status, 0)
        XCTAssertFalse(m.log.contains("error"), m.log)
    }

    // MARK: helpers

    /// Fails the test (and throws) unless every tool is installed.
    private func require(_ tools: String..., file: StaticString = #filePath, line: UInt = #line) throws {
        for tool in tools where (try? runProgram("/bin/sh", ["-c", "command -v \(tool)"]).status) != 0 {
            XCTFail("\(tool) is not installed (scripts/install-deps.sh installs it)", file: file, line: line)
            throw XCTSkip("\(tool) missing")
        }
    }

    /// Runs qemu-io with each command as a `-c`; with `check`, fails on a non-zero exit, a
    /// pattern mismatch or a failed request.
    @discardableResult
    private func qemuIO(_ image: String, _ commands: [String], format: String = "raw", flags: [String] = [], check: Bool = true,
                        file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try runProgram("qemu-io", ["-f", format] + flags + commands.flatMap { ["-c", $0] } + [image])
        let output = r.stdout + r.stderr
        let context = "qemu-io \(flags.joined(separator: " ")) on \(image):\n\(output)"
        XCTAssertEqual(r.status, 0, context, file: file, line: line)
        if check {
            XCTAssertFalse(output.contains("Pattern verification failed") || output.contains("failed:"), context, file: file, line: line)
            XCTAssertEqual(output.components(separatedBy: "\n").filter { $0.hasPrefix("read ") || $0.hasPrefix("wrote ") }.count,
                           commands.filter { ["read", "readv", "write", "writev", "aio_write"].contains($0.split(separator: " ").first ?? "") }.count,
                           "every request should report completion: \(context)", file: file, line: line)
        }
        return output
    }

    private func check(_ image: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try runProgram("qemu-img", ["check", image])
        XCTAssertEqual(r.status, 0, "qemu-img check \(image):\n\(r.stdout)\(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stdout.contains("No errors were found on the image."), r.stdout + r.stderr, file: file, line: line)
    }

    /// `qemu-img compare` (`-s`, strict, also fails on allocation differences).
    private func compare(_ a: String, _ b: String, strict: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try runProgram("qemu-img", ["compare"] + (strict ? ["-s"] : []) + [a, b])
        XCTAssertEqual(r.status, 0, "qemu-img compare \(a) \(b):\n\(r.stdout)\(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stdout.contains("Images are identical."), r.stdout + r.stderr, file: file, line: line)
    }
}
