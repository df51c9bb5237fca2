import Foundation
import XCTest
@testable import VDiskStore

/// A fresh temporary directory, removed at the end of the test.
func temporaryDirectory(_ test: XCTestCase) -> String {
    let path = NSTemporaryDirectory() + "vdiskfs-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// Deterministic pseudo-random bytes (xorshift), so tests are repeatable.
struct SeededBytes {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n { let v = next(); for k in 0..<8 where i + k < n { out[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }; i += 8 }
        return out
    }
}

/// An image of `blocks` blocks: random, repeated, zero and half-compressible blocks mixed.
func makeImage(blocks: Int, blockSize: Int = 4096, seed: UInt64 = 1, tail: Int = 0) -> [UInt8] {
    var rng = SeededBytes(seed: seed)
    var out: [UInt8] = []
    out.reserveCapacity(blocks * blockSize + tail)
    var previous: [UInt8] = []
    for i in 0..<blocks {
        switch i % 5 {
        case 0: out += [UInt8](repeating: 0, count: blockSize)
        case 1: previous = rng.bytes(blockSize); out += previous
        case 2: out += previous.isEmpty ? rng.bytes(blockSize) : previous
        case 3: out += rng.bytes(blockSize / 2) + [UInt8](repeating: 7, count: blockSize / 2)
        default: out += rng.bytes(blockSize)
        }
    }
    out += rng.bytes(tail)
    return out
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

func readFile(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path) ?? Data())
}

func XCTAssertThrowsStoreError<T>(_ expression: @autoclosure () throws -> T, _ check: (StoreError) -> Bool,
                                  file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try expression()
        XCTFail("expected an error", file: file, line: line)
    } catch let e as StoreError {
        XCTAssertTrue(check(e), "unexpected error \(e)", file: file, line: line)
    } catch {
        XCTFail("unexpected error type \(error)", file: file, line: line)
    }
}

/// `n` deterministic pseudo-random bytes from `seed`.
func randomBytes(seed: UInt64, _ n: Int) -> [UInt8] {
    var rng = SeededBytes(seed: seed)
    return rng.bytes(n)
}
