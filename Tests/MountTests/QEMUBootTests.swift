import Foundation
import XCTest

/// A real guest (Debian's cloud kernel, busybox root disk) boots from an image on the mount.
final class QEMUBootTests: XCTestCase {
    static let guestDirectory = "/var/cache/vdiskfs-guest"

    /// The guest's own test: first boot writes files, later boots check them.
    static let guestScript = """
        #!/bin/sh
        mkdir -p /data
        if [ -f /data/hello.txt ]; then
          echo "GUEST: found $(cat /data/hello.txt)"
          cd /data && sha256sum -c sum.txt && echo "GUEST: verified"
          echo second > /data/hello2.txt
        else
          echo first > /data/hello.txt
          dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null
          cd /data && sha256sum blob > sum.txt
          echo "GUEST: wrote"
        fi
        sync
        """

    override func setUpWithError() throws {
        try Self.makeGuest()
    }

    /// Builds the guest (kernel and busybox root disk) unless it is there already.
    static func makeGuest() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        try sh("sh \(root.path)/scripts/make-guest.sh \(Self.guestDirectory) >/dev/null")
    }

    static func boot(_ image: String, cache: String, extra: [String] = []) throws -> String {
        let r = try runProgram("/usr/bin/timeout", ["180", "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", Self.guestDirectory + "/vmlinuz",
            "-append", "console=ttyS0 root=/dev/nvme0n1 rw init=/init panic=-1 quiet",
            "-drive", "file=\(image),if=none,id=d0,format=raw,cache=\(cache)", "-device", "nvme,drive=d0,serial=t0"] + extra)
        XCTAssertEqual(r.status, 0, "qemu: \(r.stderr)")
        XCTAssertTrue(r.stdout.contains("GUEST: done"), "the guest did not finish:\n\(r.stdout.suffix(2000))")
        return r.stdout
    }

    func testGuestBootsFromTheMountWritesAndFindsItsFilesAfterRemount() throws {
        try Self.guestBootRound(on: MountFixture(self))
    }

    /// The guest boots from `m`'s mount and writes, a snapshot of it boots, and after a
    /// remount it finds its files; the exported image checks out. Runs on either backend.
    static func guestBootRound(on m: MountFixture) throws {
        let disk = m.directory + "/guest.img"
        try sh("cp \(Self.guestDirectory)/root.img \(disk)")
        try Self.guestScript.write(toFile: m.directory + "/test.sh", atomically: true, encoding: .utf8)
        try sh("debugfs -w -R 'write \(m.directory)/test.sh test.sh' \(disk) >/dev/null 2>&1 && debugfs -w -R 'sif /test.sh mode 0100755' \(disk) >/dev/null 2>&1")
        try m.mount()
        try sh("mkdir \(m.path("vms")) && cp \(disk) \(m.path("vms/guest.img"))")
        let first = try boot(m.path("vms/guest.img"), cache: "none")
        XCTAssertTrue(first.contains("GUEST: wrote"), first)
        // A snapshot of the guest boots read-only with -snapshot (writes go to QEMU's overlay).
        try sh("mkdir \(m.path(".snapshots/after-first-boot"))")
        let fromSnapshot = try boot(m.path(".snapshots/after-first-boot/vms/guest.img"), cache: "none", extra: ["-snapshot"])
        XCTAssertTrue(fromSnapshot.contains("GUEST: found first") && fromSnapshot.contains("GUEST: verified"), fromSnapshot)
        try m.remount()
        let second = try boot(m.path("vms/guest.img"), cache: "writeback")
        XCTAssertTrue(second.contains("GUEST: found first"), second)
        XCTAssertTrue(second.contains("GUEST: verified"), second)
        try m.unmount()
        let out = m.directory + "/exported.img"
        let r = try m.cli("export", "vms/guest.img", out)
        XCTAssertEqual(r.status, 0, r.stderr)
        try sh("e2fsck -fn \(out) >/dev/null")
        XCTAssertEqual(try sh("debugfs -R 'cat /data/hello2.txt' \(out) 2>/dev/null"), "second\n")
        XCTAssertEqual(try m.cli("verify").status, 0)
    }
}
