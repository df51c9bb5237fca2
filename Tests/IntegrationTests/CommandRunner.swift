import Foundation
import XCTest

/// Runs the built `vdiskfs` binary (or any program) and captures its output.
struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum Binary {
    /// The `vdiskfs` under test: $VDISKFS_BIN, else the package's debug build.
    static var vdiskfs: String {
        if let p = ProcessInfo.processInfo.environment["VDISKFS_BIN"], !p.isEmpty { return p }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/vdiskfs").path
    }
}

@discardableResult
func runProgram(_ program: String, _ args: [String], env: [String: String] = [:]) throws -> Run {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program)
    p.arguments = args
    var environment = ProcessInfo.processInfo.environment
    environment["VDISKFS_STORE"] = nil
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    // Read both pipes fully before waiting, so a chatty child never blocks.
    var outData = Data(), errData = Data()
    let group = DispatchGroup()
    DispatchQueue.global().async(group: group) { outData = out.fileHandleForReading.readDataToEndOfFile() }
    DispatchQueue.global().async(group: group) { errData = err.fileHandleForReading.readDataToEndOfFile() }
    group.wait()
    p.waitUntilExit()
    return Run(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
}

func vdiskfs(_ args: String..., env: [String: String] = [:]) throws -> Run { try runProgram(Binary.vdiskfs, args, env: env) }

/// Runs a shell command, failing the test when it fails.
@discardableResult
func sh(_ command: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let r = try runProgram("/bin/sh", ["-c", command])
    XCTAssertEqual(r.status, 0, "\(command): \(r.stderr)", file: file, line: line)
    return r.stdout
}

func temporaryDirectory(_ test: XCTestCase) -> String {
    let path = "/tmp/vdiskfs-it-" + UUID().uuidString.prefix(8)
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// Asserts that a failed command printed exactly one line, prefixed "vdiskfs: ", with no crash output.
func assertOneLineError(_ r: Run, code: Int32, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(r.status, code, "stderr: \(r.stderr)", file: file, line: line)
    let lines = r.stderr.split(separator: "\n")
    XCTAssertEqual(lines.count, 1, "expected one line, got: \(r.stderr)", file: file, line: line)
    XCTAssertTrue(r.stderr.hasPrefix("vdiskfs: ") || code == 64, r.stderr, file: file, line: line)
    for crash in ["Fatal error", "Stack dump", "backtrace", "Crash"] {
        XCTAssertFalse(r.stderr.contains(crash), r.stderr, file: file, line: line)
    }
}

/// Starts `vdiskfs args`, kills it with SIGKILL after `microseconds` (it may have finished by
/// then: the crash tests step the delay so kills land all through the run), and waits.
func runAndKill(_ args: [String], after microseconds: Int) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: Binary.vdiskfs)
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    usleep(useconds_t(microseconds))
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
}
