enum VDiskFUSEPlaceholder {}
