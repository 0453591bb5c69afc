// The checks io/weights.cpp runs on a weights file's bytes before LibTorch
// reads them; each throws Error naming the first problem and the fix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dtrain {

// How to make a file dtrain reads, for the errors about files it cannot.
inline constexpr const char* kResaveHint =
    "re-save it in Python with torch.save({k: v for k, v in model.state_dict().items()}, PATH)";

// A zip whose central directory lies inside the file, whose entries are
// stored (torch.save does not compress) with sizes and offsets inside the
// file, one of them <archive>/data.pkl.
void check_zip_layout(const uint8_t* bytes, size_t size, const std::string& name);

// A pickle the unpickler can run safely: every opcode finds what it pops,
// containers are built before they nest and nest a few levels at most, and
// one value is left.
void check_pickle_layout(const std::string& pickle, const std::string& name);

}  // namespace dtrain
