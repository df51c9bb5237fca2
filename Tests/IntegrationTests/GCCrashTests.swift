import Foundation
import XCTest

/// kill -9 during gc, then verify. Unlike `GarbageCollectionCommandTests` (kills on a timer),
/// each kill here lands at a step found by watching the store directory: the first copy
/// written, the copies half written, the new root committed, the first old pack deleted.
/// After every kill the store must verify clean and every image (a snapshot's too) must
/// export byte for byte as imported; then one more gc must finish and free the space.
final class GCCrashTests: XCTestCase {
    static let block = 4096

    func random(_ count: Int) throws -> Data {
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? h.close() }
        return try h.read(upToCount: count) ?? Data()
    }

    /// The pack files of `store` and their sizes.
    func packs(_ store: String) -> [String: Int] {
        var out: [String: Int] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: store + "/packs")) ?? [] where name.hasSuffix(".pack") {
            var st = stat()
            if stat(store + "/packs/" + name, &st) == 0 { out[name] = Int(st.st_size) }
        }
        return out
    }

    func inode(_ path: String) -> UInt {
        var st = stat()
        return stat(path, &st) == 0 ? UInt(st.st_ino) : 0
    }

    func packBytes(_ store: String) -> Int { packs(store).values.reduce(0, +) }

    /// Stores `live` (written to `livePath` and imported as `name`) so that its chunks share
    /// packs with as much garbage: an image interleaving its blocks with junk is imported
    /// first, then `name` (which dedups against it), then the interleaved image is removed.
    func importWithGarbage(_ store: String, _ dir: String, name: String, livePath: String, bytes: Int) throws {
        let live = try random(bytes), junk = try random(bytes)
        var mixed = Data(capacity: 2 * bytes)
        for i in stride(from: 0, to: bytes, by: Self.block) {
            mixed.append(live[i..<(i + Self.block)])
            mixed.append(junk[i..<(i + Self.block)])
        }
        try live.write(to: URL(fileURLWithPath: livePath))
        try mixed.write(to: URL(fileURLWithPath: dir + "/mixed.img"))
        XCTAssertEqual(try vdiskfs("import", "-s", store, dir + "/mixed.img", "mixed.img", "-q").status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", store, livePath, name, "-q").status, 0)
        XCTAssertEqual(try vdiskfs("rm", "-s", store, "mixed.img").status, 0)
        try FileManager.default.removeItem(atPath: dir + "/mixed.img")
    }

    /// Verifies the store and exports every image, comparing each with its source.
    func checkStore(_ store: String, _ dir: String, _ images: [(name: String, source: String)], _ context: String,
                    file: StaticString = #filePath, line: UInt = #line) throws {
        let v = try vdiskfs("verify", "-s", store)
        XCTAssertEqual(v.status, 0, "\(context): \(v.stdout) \(v.stderr)", file: file, line: line)
        for (name, source) in images {
            let out = dir + "/export.img"
            let e = try vdiskfs("export", "-s", store, name, out, "--force", "-q")
            XCTAssertEqual(e.status, 0, "\(context): export \(name): \(e.stderr)", file: file, line: line)
            XCTAssertEqual(try runProgram("/usr/bin/cmp", [source, out]).status, 0, "\(context): \(name) changed", file: file, line: line)
        }
    }

    /// Where in a gc run to kill it.
    enum Step: String, CaseIterable {
        case firstCopy = "the first copy is written"
        case halfCopied = "half the live data is copied"
        case committed = "the new root is committed"
        case deleting = "the first old pack is deleted"
    }

    /// A pack takes its name only with its header written, through a temporary file; one a
    /// kill left behind is harmless and replaced by the next pack created. (Before, a kill
    /// between creating a pack and writing its header left a headerless pack: verify failed
    /// with exit 18 and opening could fail with exit 12.)
    func testAPackLeftHalfCreatedByAKillIsHarmless() throws {
        let dir = temporaryDirectory(self)
        let s = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        try random(1 << 20).write(to: URL(fileURLWithPath: "\(dir)/a.img"))
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/a.img", "a.img").status, 0)
        let last = packs(s).keys.max()!
        let next = String(format: "%016llx.pack", UInt64(last.prefix(16), radix: 16)! + 1)
        FileManager.default.createFile(atPath: "\(s)/packs/\(next).new", contents: Data())
        XCTAssertEqual(try vdiskfs("verify", "-s", s).status, 0)
        try random(1 << 20).write(to: URL(fileURLWithPath: "\(dir)/b.img"))
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/b.img", "b.img").status, 0)
        XCTAssertNotNil(packs(s)[next], "the next pack took the number")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(s)/packs/\(next).new"))
        try checkStore(s, dir, [("a.img", "\(dir)/a.img"), ("b.img", "\(dir)/b.img")], "after a half-created pack")
    }

    func testKill9DuringGCAtEachStepThenVerify() throws {
        let dir = temporaryDirectory(self)
        let s = "\(dir)/store"
        XCTAssertEqual(try vdiskfs("init", "-s", s).status, 0)
        var images: [(name: String, source: String)] = []
        try random(16 << 20).write(to: URL(fileURLWithPath: "\(dir)/keep.img"))
        try random(8 << 20).write(to: URL(fileURLWithPath: "\(dir)/other.img"))
        try random(8 << 20).write(to: URL(fileURLWithPath: "\(dir)/snapped.img"))
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/keep.img", "keep.img", "-q").status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/other.img", "vms/other.img", "--block-size", "64K", "-q").status, 0)
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(dir)/snapped.img", "snapped.img", "-q").status, 0)
        XCTAssertEqual(try vdiskfs("snapshot", "-s", s, "--label", "s1").status, 0)
        XCTAssertEqual(try vdiskfs("rm", "-s", s, "snapped.img").status, 0)   // kept by the snapshot only
        images += [("keep.img", "\(dir)/keep.img"), ("vms/other.img", "\(dir)/other.img"), ("@s1/snapped.img", "\(dir)/snapped.img")]

        let liveBytes = 24 << 20
        var round = 0
        for step in Step.allCases {
            // A step that passes too quickly to be caught is tried again with new garbage.
            var landed = false
            for attempt in 0..<4 where !landed {
                let name = "live\(round).img"
                try importWithGarbage(s, dir, name: name, livePath: "\(dir)/\(name)", bytes: liveBytes)
                images.append((name, "\(dir)/\(name)"))
                round += 1
                let dry = try vdiskfs("gc", "-s", s, "--dry-run", "--json", "--threshold", "0.9")
                XCTAssertEqual(dry.status, 0, dry.stderr)
                let plan = try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any] ?? [:]
                let going = Set((plan["packs_to_rewrite"] as? [String] ?? []) + (plan["packs_to_delete"] as? [String] ?? []))
                XCTAssertFalse(going.isEmpty, "there is garbage to collect: \(dry.stdout)")
                let before = packs(s)
                let root = inode("\(s)/roots/current")

                let gc = Process()
                gc.executableURL = URL(fileURLWithPath: Binary.vdiskfs)
                gc.arguments = ["gc", "-s", s, "-q", "--threshold", "0.9"]
                gc.standardOutput = FileHandle.nullDevice
                gc.standardError = FileHandle.nullDevice
                try gc.run()
                // Watch the store until the step is seen (or gc ends first).
                while gc.isRunning {
                    let now = packs(s)
                    let new = now.filter { before[$0.key] == nil }
                    let seen: Bool
                    switch step {
                    case .firstCopy: seen = !new.isEmpty
                    case .halfCopied: seen = new.values.reduce(0, +) >= liveBytes / 2
                    case .committed: seen = inode("\(s)/roots/current") != root
                    case .deleting: seen = going.contains { now[$0] == nil }
                    }
                    if seen {
                        kill(gc.processIdentifier, SIGKILL)
                        break
                    }
                    usleep(100)
                }
                gc.waitUntilExit()
                landed = gc.terminationReason == .uncaughtSignal
                let context = "kill -9 when \(step.rawValue) (attempt \(attempt), \(landed ? "killed" : "gc had finished"))"
                try checkStore(s, dir, images, context)
            }
            XCTAssertTrue(landed, "a kill landed while gc was running when \(step.rawValue)")
        }

        // One more gc finishes and frees the space: only the images' data is left.
        let liveTotal = (16 + 8 + 8) << 20 + round * liveBytes
        let before = packBytes(s)
        let gc = try vdiskfs("gc", "-s", s, "-q", "--threshold", "0.9")
        XCTAssertEqual(gc.status, 0, gc.stderr)
        try checkStore(s, dir, images, "after a complete gc")
        let after = packBytes(s)
        XCTAssertLessThanOrEqual(after, before)
        XCTAssertLessThan(after, liveTotal + liveTotal / 20, "only live data is left (\(before) → \(after) bytes of packs)")
        let dry = try vdiskfs("gc", "-s", s, "--dry-run", "--json", "--threshold", "0.9")
        let plan = try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any] ?? [:]
        XCTAssertEqual(plan["bytes_to_free"] as? Int, 0, dry.stdout)
    }
}
