import Foundation
import XCTest

/// The `vdiskfs` command on real files: real ext4 images, real exit codes, real crashes.
final class CommandLineTests: XCTestCase {
    /// A small real ext4 image with files in it, made by mkfs.ext4 -d.
    func makeExt4Image(_ dir: String, name: String = "disk.img", size: String = "64M") throws -> String {
        try sh("mkdir -p \(dir)/tree/etc \(dir)/tree/data && seq 1 20000 > \(dir)/tree/etc/numbers && head -c 3000000 /dev/urandom > \(dir)/tree/data/random && cp \(dir)/tree/etc/numbers \(dir)/tree/data/copy")
        try sh("mkfs.ext4 -q -F -d \(dir)/tree \(dir)/\(name) \(size)")
        return "\(dir)/\(name)"
    }

    func testImportExportRealExt4Image() throws {
        let dir = temporaryDirectory(self)
        let image = try makeExt4Image(dir)
        XCTAssertEqual(try vdiskfs("init", "-s", "\(dir)/store").status, 0)
        let imp = try vdiskfs("import", "-s", "\(dir)/store", image, "vms/web1.img")
        XCTAssertEqual(imp.status, 0, imp.stderr)
        XCTAssertEqual(imp.stderr, "", "no progress output when stderr is not a terminal")
        let exp = try vdiskfs("export", "-s", "\(dir)/store", "vms/web1.img", "\(dir)/out.img")
        XCTAssertEqual(exp.status, 0, exp.stderr)
        try sh("cmp \(image) \(dir)/out.img")
        try sh("e2fsck -fn \(dir)/out.img >/dev/null")
        // Exported as a sparse file.
        let allocated = try sh("du -k \(dir)/out.img | cut -f1")
        XCTAssertLessThan(Int(allocated.trimmingCharacters(in: .whitespacesAndNewlines))!, 32 * 1024)
        // A second copy at 64 KiB blocks, listing, stats as JSON, verify.
        XCTAssertEqual(try vdiskfs("import", "-s", "\(dir)/store", image, "vms/web2.img", "--block-size", "64K").status, 0)
        let ls = try vdiskfs("ls", "-s", "\(dir)/store", "vms")
        XCTAssertTrue(ls.stdout.contains("vms/web1.img") && ls.stdout.contains("vms/web2.img"), ls.stdout)
        let stats = try vdiskfs("stats", "-s", "\(dir)/store", "--json")
        let json = try JSONSerialization.jsonObject(with: Data(stats.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(json["logical_bytes"] as? Int, 2 * 64 * 1024 * 1024)
        XCTAssertLessThan(json["stored_bytes"] as! Int, 64 * 1024 * 1024)
        XCTAssertNotNil(json["dedup_ratio"])
        XCTAssertEqual(try vdiskfs("verify", "-s", "\(dir)/store").status, 0)
        // The store may come from the environment.
        XCTAssertEqual(try vdiskfs("ls", env: ["VDISKFS_STORE": "\(dir)/store"]).status, 0)
        XCTAssertEqual(try vdiskfs("rm", "-s", "\(dir)/store", "vms/web2.img").status, 0)
        XCTAssertFalse(try vdiskfs("ls", "-s", "\(dir)/store").stdout.contains("web2"))
    }

    func testEveryErrorIsOneLineWithItsExitCode() throws {
        let dir = temporaryDirectory(self)
        let s = "\(dir)/store"
        try sh("head -c 1000000 /dev/urandom > \(dir)/in.img")
        assertOneLineError(try vdiskfs("ls", "-s", s), code: 10)                       // store missing
        assertOneLineError(try vdiskfs("ls", "-s", dir), code: 11)                     // not a store
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        assertOneLineError(try vdiskfs("init", "-s", s), code: 14)                     // exists
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/in.img", "a.img").status, 0)
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/in.img", "a.img"), code: 14)   // name exists
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/in.img", "a.img/b"), code: 14) // under an image
        assertOneLineError(try vdiskfs("export", "-s", s, "nope.img", "\(dir)/x"), code: 15)     // no such image
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/missing", "b.img"), code: 16)  // input unreadable
        assertOneLineError(try vdiskfs("import", "-s", s, dir, "b.img"), code: 16)               // a directory
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/in.img", "../b.img"), code: 19)
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/in.img", "b.img", "--block-size", "3K"), code: 19)
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/in.img", "b.img", "--group-size", "12K"), code: 19)
        assertOneLineError(try vdiskfs("export", "-s", s, "a.img", "\(dir)/in.img"), code: 14)   // output exists
        XCTAssertEqual(try vdiskfs("export", "-s", s, "a.img", "\(dir)/in.img", "--force").status, 0)
        XCTAssertEqual(try vdiskfs("bogus").status, 64)
        XCTAssertEqual(try vdiskfs("ls").status, 64)                                               // no store given
        // Locked: another process (this test) holds the store's lock for writing.
        let lockFD = open("\(s)/lock", O_RDWR)
        XCTAssertEqual(flock(lockFD, LOCK_EX), 0)
        assertOneLineError(try vdiskfs("ls", "-s", s), code: 13)
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/in.img", "c.img"), code: 13)
        close(lockFD)
        XCTAssertEqual(try vdiskfs("ls", "-s", s).status, 0)
        // Damaged store metadata.
        try sh("printf garbage > \(s)/roots/current")
        assertOneLineError(try vdiskfs("ls", "-s", s), code: 12)
    }

    func testDiskFullLeavesTheStoreAsItWas() throws {
        let dir = temporaryDirectory(self)
        try sh("mkdir -p \(dir)/small && mount -t tmpfs -o size=6M tmpfs \(dir)/small")
        defer { _ = try? runProgram("/bin/umount", ["\(dir)/small"]) }
        let s = "\(dir)/small/store"
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        try sh("head -c 1000000 /dev/urandom > \(dir)/ok.img && head -c 20000000 /dev/urandom > \(dir)/big.img")
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/ok.img", "ok.img").status, 0)
        let before = try sh("du -sb \(s) | cut -f1")
        assertOneLineError(try vdiskfs("import", "-s", s, "\(dir)/big.img", "big.img"), code: 17)
        XCTAssertEqual(try sh("du -sb \(s) | cut -f1"), before, "a failed import leaves the store as it was")
        XCTAssertEqual(try vdiskfs("verify", "-s", s).status, 0)
        XCTAssertEqual(try vdiskfs("export", "-s", s, "ok.img", "\(dir)/ok.out").status, 0)
        try sh("cmp \(dir)/ok.img \(dir)/ok.out")
    }

    func testCorruptionIsReportedAndNeverExported() throws {
        let dir = temporaryDirectory(self)
        let image = try makeExt4Image(dir)
        let s = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", s, image, "a.img").status, 0)
        // Flip one byte in the largest pack, past its header.
        let pack = try sh("ls -S \(s)/packs | head -1").trimmingCharacters(in: .whitespacesAndNewlines)
        try sh("printf '\\377' | dd of=\(s)/packs/\(pack) bs=1 seek=100000 conv=notrunc status=none")
        let v = try vdiskfs("verify", "-s", s)
        XCTAssertEqual(v.status, 18)
        XCTAssertTrue(v.stdout.contains("damaged"), v.stdout)
        XCTAssertTrue(v.stdout.contains("a.img"), v.stdout)
        assertOneLineError(try vdiskfs("export", "-s", s, "a.img", "\(dir)/out.img"), code: 18)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out.img"))
    }

    /// kill -9 an import at many points; every time the store must open, verify clean, and
    /// hold either the old or the new namespace.
    func testKilledImportLeavesAConsistentStore() throws {
        let dir = temporaryDirectory(self)
        let s = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        try sh("head -c 48000000 /dev/urandom > \(dir)/big.img")
        var sawOld = false
        for round in 0..<8 {
            try runAndKill(["import", "-s", s, "\(dir)/big.img", "img\(round)", "-q"], after: 20_000 * (round + 1))
            let v = try vdiskfs("verify", "-s", s)
            XCTAssertEqual(v.status, 0, "round \(round): \(v.stdout) \(v.stderr)")
            let ls = try vdiskfs("ls", "-s", s).stdout
            if !ls.contains("img\(round)") { sawOld = true } else {
                XCTAssertEqual(try vdiskfs("export", "-s", s, "img\(round)", "\(dir)/out\(round)").status, 0)
                try sh("cmp \(dir)/big.img \(dir)/out\(round)")
            }
        }
        XCTAssertTrue(sawOld, "at least one kill landed before the commit")
        // The store still takes writes after all that.
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/big.img", "final").status, 0)
        XCTAssertEqual(try vdiskfs("verify", "-s", s).status, 0)
    }
}

final class GarbageCollectionCommandTests: XCTestCase {
    /// kill -9 a gc at many points: the store must open and verify clean every time, and
    /// the surviving image must export unchanged.
    func testKilledGCLeavesAConsistentStore() throws {
        let dir = temporaryDirectory(self)
        let s = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        try sh("head -c 30000000 /dev/urandom > \(dir)/keep.img")
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/keep.img", "keep.img").status, 0)
        for round in 0..<6 {
            try sh("head -c 20000000 /dev/urandom > \(dir)/junk.img")
            XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/junk.img", "junk.img").status, 0)
            XCTAssertEqual(try vdiskfs("rm", "-s", s, "junk.img").status, 0)
            let dry = try vdiskfs("gc", "-s", s, "--dry-run", "--json")
            XCTAssertEqual(dry.status, 0, dry.stderr)
            XCTAssertTrue(dry.stdout.contains("bytes_to_free"), dry.stdout)
            try runAndKill(["gc", "-s", s, "-q", "--threshold", "0.9"], after: 15_000 * round)
            let v = try vdiskfs("verify", "-s", s)
            XCTAssertEqual(v.status, 0, "round \(round): \(v.stdout) \(v.stderr)")
            XCTAssertEqual(try vdiskfs("export", "-s", s, "keep.img", "\(dir)/out\(round)").status, 0)
            try sh("cmp \(dir)/keep.img \(dir)/out\(round)")
        }
        XCTAssertEqual(try vdiskfs("gc", "-s", s, "-q").status, 0)
        XCTAssertEqual(try vdiskfs("verify", "-s", s).status, 0)
        let size = Int(try sh("du -sb \(s)/packs | cut -f1").trimmingCharacters(in: .whitespacesAndNewlines))!
        XCTAssertLessThan(size, 34_000_000, "only keep.img's data is left")
    }
}
