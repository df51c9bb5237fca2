import ArgumentParser
import Foundation
import VDiskStore

struct LeaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lease", abstract: "Show or break image write leases of a shared (rados://) store.",
        discussion: """
            On a store shared by several hosts each image has at most one writer, which holds \
            its lease; a lease lasts the store's lease time (rados://…?lease=SECONDS, default 30) \
            unless its holder renews it, so a crashed host's leases free themselves. 'break' \
            frees one at once: only when its holder is known to be dead, or its writes are lost.
            """,
        subcommands: [ListLeases.self, BreakLease.self], defaultSubcommand: ListLeases.self)

    struct ListLeases: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the leases held now.")
        @OptionGroup var store: StoreOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let backend = try StoreBackends.backend(for: try store.path)
            _ = try backend.readConfig()
            let leases = try backend.leases()
            if json { try printJSON(leases); return }
            for l in leases { print("\(l.image)\t\(l.holder)") }
        }
    }

    struct BreakLease: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "break", abstract: "Break the lease of an image (its holder is dead).")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The image's name.") var name: String

        func run() throws {
            let backend = try StoreBackends.backend(for: try store.path)
            _ = try backend.readConfig()
            guard try backend.breakLease(image: name) else { throw StoreError.noSuchImage(name: "\(name) (no lease held)") }
            print("broke the lease of \(name)")
        }
    }
}
