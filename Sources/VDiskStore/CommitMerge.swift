/// Re-applying one host's commit on top of another's (shared stores). Each host changes
/// only the images it holds the lease of, so a three-way merge by name is exact for them:
/// every name this commit added, changed or removed since its base takes this commit's
/// value; every other name keeps the other host's.
extension Namespace {
    /// `theirs` with the changes from `base` to `ours` applied.
    static func merging(base: Namespace, ours: Namespace, theirs: Namespace) -> Namespace {
        var merged = theirs
        for name in Set(base.entries.keys).union(ours.entries.keys) where base.entries[name] != ours.entries[name] {
            merged.entries[name] = ours.entries[name]
        }
        return merged
    }
}

extension Snapshot {
    /// `theirs` with the snapshots this commit took (not in `base`) added and those it
    /// deleted (in `base`, not in `ours`) removed; ordered by creation time.
    static func merging(base: [Snapshot], ours: [Snapshot], theirs: [Snapshot]) -> [Snapshot] {
        let baseNames = Set(base.map(\.name))
        let ourNames = Set(ours.map(\.name))
        let theirNames = Set(theirs.map(\.name))
        var merged = theirs.filter { !baseNames.contains($0.name) || ourNames.contains($0.name) }
        merged += ours.filter { !baseNames.contains($0.name) && !theirNames.contains($0.name) }
        return merged.sorted { ($0.created, $0.name) < ($1.created, $1.name) }
    }
}
