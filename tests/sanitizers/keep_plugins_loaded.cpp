// Linked into every executable of the sanitized build only (CMake
// DTRAIN_SANITIZE). Open MPI loads its components as plugins (mca_*.so) and
// unloads them in MPI_Finalize; LeakSanitizer then reports their leftover
// allocations with "<unknown module>" frames, which no suppression can name.
// This definition, in the executable, takes precedence over libc's dlclose
// for every library, so plugins stay mapped until exit and their leaks are
// attributed to them by name (tests/sanitizers/lsan.supp). Nothing else
// changes: a process that exits frees its mappings anyway.
extern "C" int dlclose(void*) { return 0; }
