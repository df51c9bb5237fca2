import Foundation
import XCTest

/// File-system-aware import on real ext2/3/4 images whose free blocks hold stale data.
final class FileSystemAwareTests: XCTestCase {
    var dir = ""

    override func setUp() { dir = temporaryDirectory(self) }

    func populate(_ image: String, offset: Int, mkfsOptions: String, sizeMiB: Int) throws -> String {
        try populateExt4(dir, image, offset: offset, mkfsOptions: mkfsOptions, sizeMiB: sizeMiB)
    }

    func checkExport(_ store: String, _ name: String, offset: Int, sums: String) throws {
        try checkExt4Export(dir, store, name, offset: offset, sums: sums)
    }

    func importJSON(_ store: String, _ image: String, _ name: String, _ extra: [String] = []) throws -> [String: Any] {
        let r = try runProgram(Binary.vdiskfs, ["import", "-s", store, image, name, "--json"] + extra)
        XCTAssertEqual(r.status, 0, r.stderr)
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
    }

    func testFreeBlocksAreSkippedAcrossBlockSizesAndFeatures() throws {
        let store = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", store).status, 0)
        let variants: [(String, String)] = [
            ("default", "-b 4096"),                              // ext4: flex_bg, 64bit, metadata_csum
            ("1k", "-b 1024"),
            ("noflex", "-O ^flex_bg,^64bit,^metadata_csum"),
            ("ext2", "-t ext2"),
        ]
        for (label, opts) in variants {
            let image = "\(dir)/\(label).img"
            let sums = try populate(image, offset: 0, mkfsOptions: opts, sizeMiB: 48)
            let raw = try importJSON(store, image, "\(label)-raw.img", ["--raw"])
            let aware = try importJSON(store, image, "\(label).img")
            XCTAssertEqual(raw["free_bytes_skipped"] as? Int, 0, label)
            XCTAssertGreaterThan(aware["free_bytes_skipped"] as! Int, 5_000_000, "\(label): the deleted files' 6 MB are skipped")
            try checkExport(store, "\(label).img", offset: 0, sums: sums)
        }
        XCTAssertEqual(try vdiskfs("verify", "-s", store).status, 0)
    }

    func testPartitionTables() throws {
        let store = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", store).status, 0)
        for (label, tool) in [("mbr", "printf 'label: dos\\nstart=2048, size=98304, type=83\\n' | sfdisk -q"),
                              ("gpt", "printf 'label: gpt\\nstart=2048, size=98304\\n' | sfdisk -q")] {
            let image = "\(dir)/\(label).img"
            try sh("truncate -s 64M \(image) && \(tool) \(image)")
            let sums = try populate(image, offset: 1 << 20, mkfsOptions: "", sizeMiB: 48)
            try sh("\(tool) \(image)")   // mkfs with an offset leaves the table alone; write it again to be sure
            let aware = try importJSON(store, image, "\(label).img")
            XCTAssertGreaterThan(aware["free_bytes_skipped"] as! Int, 5_000_000, label)
            try checkExport(store, "\(label).img", offset: 1 << 20, sums: sums)
        }
    }

    func testDamagedBitmapFallsBackToRaw() throws {
        let store = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", store).status, 0)
        let image = "\(dir)/bad.img"
        let sums = try populate(image, offset: 0, mkfsOptions: "-b 4096", sizeMiB: 48)
        // Damage group 0's block bitmap: its metadata_csum no longer matches.
        let bitmapBlock = try sh("dumpe2fs \(image) 2>/dev/null | sed -n 's/.*Block bitmap at \\([0-9]*\\).*/\\1/p' | head -1")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try sh("printf '\\245\\245\\245\\245' | dd of=\(image) bs=1 seek=$((\(bitmapBlock) * 4096 + 300)) conv=notrunc status=none")
        let r = try runProgram(Binary.vdiskfs, ["import", "-s", store, image, "bad.img", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("warning") && r.stderr.contains("checksum"), r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(json["free_bytes_skipped"] as? Int, 0)
        // Stored raw: the export is the input, byte for byte (the damaged bitmap included).
        XCTAssertEqual(try vdiskfs("export", "-s", store, "bad.img", "\(dir)/bad.out").status, 0)
        try sh("cmp \(image) \(dir)/bad.out")
        _ = sums
        // A damaged superblock magic: not a file system at all, stored raw without complaint.
        try sh("printf '\\000\\000' | dd of=\(image) bs=1 seek=$((1024 + 56)) conv=notrunc status=none")
        let plain = try importJSON(store, image, "plain.img")
        XCTAssertEqual(plain["free_bytes_skipped"] as? Int, 0)
    }
}

extension FileSystemAwareTests {
    /// The journal's blocks, logical order (block 0 is the journal superblock), and the image's blocks.
    func journalBlocks(_ image: String) throws -> [Int] {
        try sh("debugfs -R 'blocks <8>' \(image) 2>/dev/null").split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    func block(_ bytes: [UInt8], _ n: Int) -> ArraySlice<UInt8> { bytes[(n * 4096)..<((n + 1) * 4096)] }
    func readFile(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }
    func writeFile(_ path: String, _ bytes: [UInt8]) { FileManager.default.createFile(atPath: path, contents: Data(bytes)) }

    func testACleanJournalsLogIsStoredAsZerosAndAJournalWithTransactionsIsKept() throws {
        let store = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", store).status, 0)
        let image = "\(dir)/j.img"
        let sums = try populate(image, offset: 0, mkfsOptions: "-b 4096", sizeMiB: 48)
        let journal = try journalBlocks(image)
        XCTAssertGreaterThan(journal.count, 1000)
        let input = readFile(image)
        let used = journal.dropFirst().filter { block(input, $0).contains { $0 != 0 } }
        XCTAssertGreaterThan(used.count, 10, "the mount wrote transactions into the journal")

        // Clean (unmounted): the log area comes back as zeros; the journal superblock as it was.
        let aware = try importJSON(store, image, "j.img")
        let bitmapOnly = try importJSON(store, image, "j-raw.img", ["--raw"])
        XCTAssertEqual(bitmapOnly["free_bytes_skipped"] as? Int, 0)
        XCTAssertGreaterThanOrEqual(aware["free_bytes_skipped"] as! Int, used.count * 4096)
        try checkExport(store, "j.img", offset: 0, sums: sums)   // e2fsck -fn, mount, same files
        let out = readFile("\(dir)/j.img.out")
        XCTAssertEqual(block(out, journal[0]), block(input, journal[0]))
        for b in used { XCTAssertTrue(block(out, b).allSatisfy { $0 == 0 }, "journal block \(b)") }
        // The export mounts read-write (a fresh log over the zeros) and stays consistent.
        let mnt = "\(dir)/rw"
        try sh("mkdir -p \(mnt) && mount -o loop \(dir)/j.img.out \(mnt) && echo more > \(mnt)/more && umount \(mnt)")
        try sh("e2fsck -fn \(dir)/j.img.out >/dev/null")

        // A journal whose superblock says it holds transactions (s_start != 0): kept byte for byte.
        var dirty = input
        let jsb = journal[0] * 4096 + 0x1C
        dirty.replaceSubrange(jsb..<(jsb + 4), with: [0, 0, 0, 1])
        writeFile("\(dir)/dirty.img", dirty)
        _ = try importJSON(store, "\(dir)/dirty.img", "dirty.img")
        XCTAssertEqual(try vdiskfs("export", "-s", store, "dirty.img", "\(dir)/dirty.out").status, 0)
        let back = readFile("\(dir)/dirty.out")
        for b in journal { XCTAssertEqual(block(back, b), block(dirty, b), "journal block \(b)") }
    }
}

final class TrimTests: XCTestCase {
    func testTrimReclaimsFreeBlocksOfARawImport() throws {
        let dir = temporaryDirectory(self)
        let store = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", store).status, 0)
        let image = "\(dir)/disk.img"
        let sums = try populateExt4(dir, image, offset: 0, mkfsOptions: "-b 4096", sizeMiB: 48)
        XCTAssertEqual(try vdiskfs("import", "-s", store, image, "disk.img", "--raw").status, 0)
        XCTAssertEqual(try vdiskfs("snapshot", "-s", store, "--label", "before").status, 0)
        let r = try runProgram(Binary.vdiskfs, ["trim", "-s", store, "disk.img", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        XCTAssertGreaterThan(json["freed_bytes"] as! Int, 5_000_000, "the deleted files' blocks")
        try checkExt4Export(dir, store, "disk.img", offset: 0, sums: sums)
        // The snapshot keeps the untrimmed version, byte for byte.
        XCTAssertEqual(try vdiskfs("export", "-s", store, "@before/disk.img", "\(dir)/before.img").status, 0)
        try sh("cmp \(image) \(dir)/before.img")
        // Without the snapshot, gc frees what trim released.
        XCTAssertEqual(try vdiskfs("snapshot", "-s", store, "--delete", "before").status, 0)
        let gc = try runProgram(Binary.vdiskfs, ["gc", "-s", store, "--json", "--threshold", "0.9"])
        XCTAssertEqual(gc.status, 0, gc.stderr)
        let plan = try JSONSerialization.jsonObject(with: Data(gc.stdout.utf8)) as! [String: Any]
        XCTAssertGreaterThan(plan["bytes_to_free"] as! Int, 1_000_000)
        XCTAssertEqual(try vdiskfs("verify", "-s", store).status, 0)
        XCTAssertEqual(try vdiskfs("trim", "-s", store, "nope").status, 15)
    }
}

/// Makes a file system in `image` at byte `offset`, fills it, deletes half the data
/// (leaving stale bytes in free blocks), and returns the sha256sum listing of what remains.
func populateExt4(_ dir: String, _ image: String, offset: Int, mkfsOptions: String, sizeMiB: Int) throws -> String {
    let mnt = "\(dir)/mnt"
    try sh("mkdir -p \(mnt)")
    try sh("mkfs.ext4 -q -F \(mkfsOptions) -E offset=\(offset) \(image) \(sizeMiB)M")
    try sh("mount -o loop,offset=\(offset) \(image) \(mnt)")
    defer { _ = try? runProgram("/bin/umount", [mnt]) }
    try sh("for i in 1 2 3 4 5 6; do head -c 2000000 /dev/urandom > \(mnt)/f$i; done; seq 1 100000 > \(mnt)/numbers; sync")
    try sh("rm \(mnt)/f2 \(mnt)/f4 \(mnt)/f6; sync")
    let sums = try sh("cd \(mnt) && sha256sum f1 f3 f5 numbers")
    try sh("umount \(mnt)")
    return sums
}

/// Exports `name`, checks it with e2fsck, mounts it and compares the files.
func checkExt4Export(_ dir: String, _ store: String, _ name: String, offset: Int, sums: String) throws {
    let out = "\(dir)/\(name).out"
    XCTAssertEqual(try vdiskfs("export", "-s", store, name, out).status, 0)
    let loop = try sh("losetup --find --show --read-only -o \(offset) \(out)").trimmingCharacters(in: .whitespacesAndNewlines)
    defer { _ = try? runProgram("/sbin/losetup", ["-d", loop]) }
    try sh("e2fsck -fn \(loop) >/dev/null")
    let mnt = "\(dir)/check"
    try sh("mkdir -p \(mnt) && mount -o loop,ro,offset=\(offset) \(out) \(mnt)")
    defer { _ = try? runProgram("/bin/umount", [mnt]) }
    XCTAssertEqual(try sh("cd \(mnt) && sha256sum f1 f3 f5 numbers"), sums)
}

