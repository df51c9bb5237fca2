import Foundation
import XCTest

/// kill -9 of the mount daemon while it runs a gc asked for through its control socket, at a
/// step found by watching the store (copies half written; new root committed), with a write
/// made while gc ran still in the journal: `fusermount3 -u` the dead mount, verify the store,
/// mount again (the journal replays) and every image reads back as written. A last gc then finishes and frees
/// the space. (GCCrashTests does the same to the `vdiskfs gc` process of an unmounted store.)
final class MountedGCCrashTests: XCTestCase {
    func random(_ count: Int) throws -> Data {
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? h.close() }
        return try h.read(upToCount: count) ?? Data()
    }

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

    enum Step: String, CaseIterable {
        case halfCopied = "half the live data is copied"
        case committed = "the new root is committed"
    }

    func testKill9OfTheMountDuringGCThenRemountAndVerify() throws {
        let m = try MountFixture(self)
        let d = m.directory
        let s = m.store
        try random(16 << 20).write(to: URL(fileURLWithPath: "\(d)/keep.img"))
        XCTAssertEqual(try vdiskfs("import", "-s", s, "\(d)/keep.img", "keep.img").status, 0)
        var images: [(name: String, source: String)] = [("keep.img", "\(d)/keep.img")]
        try m.mount()

        let liveBytes = 24 << 20, block = 4096
        var round = 0
        for step in Step.allCases {
            var landed = false
            for attempt in 0..<4 where !landed {
                // Garbage sharing packs with live data: an image interleaving live.img's blocks
                // with junk is written first, then live.img (deduplicated), then removed.
                let name = "live\(round).img", journaled = "j\(round).img"
                round += 1
                let live = try random(liveBytes), junk = try random(liveBytes)
                var mixed = Data(capacity: 2 * liveBytes)
                for i in stride(from: 0, to: liveBytes, by: block) {
                    mixed.append(live[i..<(i + block)])
                    mixed.append(junk[i..<(i + block)])
                }
                try live.write(to: URL(fileURLWithPath: "\(d)/\(name)"))
                try mixed.write(to: URL(fileURLWithPath: "\(d)/mixed.img"))
                try sh("dd if=\(d)/mixed.img of=\(m.path("mixed.img")) bs=1M conv=fsync status=none")
                // --dry-run flushes: mixed.img is in the packs before live.img is written.
                XCTAssertEqual(try vdiskfs("gc", "-s", s, "--dry-run").status, 0)
                try sh("dd if=\(d)/\(name) of=\(m.path(name)) bs=1M conv=fsync status=none && rm \(m.path("mixed.img"))")
                images.append((name, "\(d)/\(name)"))
                let dry = try vdiskfs("gc", "-s", s, "--dry-run", "--json", "--threshold", "0.9")
                XCTAssertEqual(dry.status, 0, dry.stderr)
                let plan = try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any] ?? [:]
                XCTAssertGreaterThan(plan["bytes_to_free"] as? Int ?? 0, liveBytes / 2, dry.stdout)
                // An image written (and fsynced) while gc runs: gc holds commits off, so its
                // blocks are still in the journal when the mount dies. Created now (a create
                // commits, and would wait for gc).
                try random(1 << 20).write(to: URL(fileURLWithPath: "\(d)/\(journaled)"))
                try sh(": > \(m.path(journaled))")
                images.append((journaled, "\(d)/\(journaled)"))
                let writeJournaled = "dd if=\(d)/\(journaled) of=\(m.path(journaled)) bs=64k conv=notrunc,fsync status=none"

                guard let daemon = m.daemonPID() else { XCTFail("no daemon"); return }
                let before = packs(s)
                let root = inode("\(s)/roots/current")
                let gc = Process()
                gc.executableURL = URL(fileURLWithPath: VDiskfsBinary.path)
                gc.arguments = ["gc", "-s", s, "--threshold", "0.9"]
                gc.standardOutput = FileHandle.nullDevice
                gc.standardError = FileHandle.nullDevice
                try gc.run()
                var killed = false, wrote = false
                while gc.isRunning {
                    let copied = packs(s).filter { before[$0.key] == nil }.values.reduce(0, +)
                    if copied > 0 && !wrote {
                        try sh(writeJournaled)
                        wrote = true
                    }
                    let seen: Bool
                    switch step {
                    case .halfCopied: seen = copied >= liveBytes / 2
                    case .committed: seen = inode("\(s)/roots/current") != root
                    }
                    if seen {
                        XCTAssertEqual(kill(daemon, SIGKILL), 0)
                        killed = true
                        break
                    }
                    usleep(100)
                }
                gc.waitUntilExit()
                if !wrote { try sh(writeJournaled) }
                // The command fails when the mount dies under it; it succeeds when gc ended first.
                landed = killed && gc.terminationStatus != 0
                let context = "kill -9 of the mount when \(step.rawValue) (attempt \(attempt), \(landed ? "during gc" : "gc had finished"))"
                guard killed else { continue }
                XCTAssertTrue(m.waitForExit(daemon), context)
                try m.unmount()
                let v = try vdiskfs("verify", "-s", s)
                XCTAssertEqual(v.status, 0, "\(context): \(v.stdout) \(v.stderr)")
                try m.mount()   // replays the journal
                for (image, source) in images {
                    XCTAssertEqual(try runProgram("/usr/bin/cmp", [source, m.path(image)]).status, 0, "\(context): \(image) changed")
                }
            }
            XCTAssertTrue(landed, "a kill landed while the mount's gc was running when \(step.rawValue)")
        }

        // A gc through the mount now finishes and frees the space.
        let gc = try vdiskfs("gc", "-s", s, "--threshold", "0.9")
        XCTAssertEqual(gc.status, 0, gc.stderr)
        try m.unmount()
        XCTAssertEqual(try vdiskfs("verify", "-s", s).status, 0)
        var liveTotal = 0
        for (image, source) in images {
            XCTAssertEqual(try vdiskfs("export", "-s", s, image, "\(d)/out.img", "--force").status, 0)
            XCTAssertEqual(try runProgram("/usr/bin/cmp", [source, "\(d)/out.img"]).status, 0, "\(image) changed")
            liveTotal += Int((try FileManager.default.attributesOfItem(atPath: source))[.size] as? UInt64 ?? 0)
        }
        let after = packs(s).values.reduce(0, +)
        XCTAssertLessThan(after, liveTotal + liveTotal / 20, "only live data is left")
    }
}
