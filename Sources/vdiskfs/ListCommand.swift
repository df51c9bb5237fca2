import ArgumentParser
import Foundation
import VDiskStore

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List images with their size and the space they use.",
        discussion: """
            SIZE is the logical size; ALLOCATED the bytes in non-zero blocks; STORED the bytes on \
            disk of the distinct chunks the image uses (compressed, shared ones included); UNIQUE \
            the part of STORED no other image uses, which removing the image would free (after gc).
            """)

    @OptionGroup var store: StoreOptions
    @Argument(help: "A directory or image to list (default: everything).") var path: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readOnly, purpose: "ls")
        let prefix = try path.map { try Namespace.validate($0) } ?? ""
        let usage = try s.usage(under: prefix)
        if json { try printJSON(usage); return }
        let width = max(4, usage.map(\.name.count).max() ?? 0)
        func row(_ cells: [String]) -> String {
            cells[0].padding(toLength: width, withPad: " ", startingAt: 0) + cells.dropFirst().map { String(repeating: " ", count: max(0, 12 - $0.count)) + $0 }.joined(separator: " ")
        }
        print(row(["NAME", "SIZE", "ALLOCATED", "STORED", "UNIQUE"]))
        for u in usage {
            print(row([u.name, formatBytes(Int64(u.size)), formatBytes(u.allocatedBytes), formatBytes(u.storedBytes), formatBytes(u.uniqueBytes)]))
        }
    }
}
