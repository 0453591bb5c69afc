// The input checks of weights files: what can be verified of a zip and its
// pickle before LibTorch 1.13's reader and unpickler see the bytes (they
// crash on some malformed input). The weights fuzz harness drives them
// through parse_weights.
#include "io/weights_checks.h"

#include "common/error.h"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace dtrain {

namespace {


uint32_t le32(const uint8_t* p) { return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24; }
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint64_t le64(const uint8_t* p) { return uint64_t{le32(p)} | uint64_t{le32(p + 4)} << 32; }

// What can be checked before LibTorch's zip reader and unpickler see the
// bytes (LibTorch 1.13 has known crashes on malformed input): a zip whose
// central directory lies inside the file, whose entries are stored (torch.save
// does not compress) with sizes and offsets inside the file, one of them
// <archive>/data.pkl. Throws Error naming the first problem.
}  // namespace

void check_zip_layout(const uint8_t* bytes, size_t size, const std::string& name) {
  auto refuse = [&](const std::string& problem) {
    throw Error("cannot read weights from " + name + " (" + problem + "); " + kResaveHint);
  };
  if (size < 22 || le32(bytes) != 0x04034b50) refuse("not a zip archive");
  // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
  size_t end = std::string::npos;
  for (size_t at = size - 22 + 1; at-- > 0 && size - at <= 65535 + 22;) {
    if (le32(bytes + at) == 0x06054b50) {
      end = at;
      break;
    }
  }
  if (end == std::string::npos) refuse("no zip directory at its end: truncated?");
  uint64_t entries = le16(bytes + end + 10);
  uint64_t directory_size = le32(bytes + end + 12), directory_offset = le32(bytes + end + 16);
  // Zip64 fields (all ones) would let miniz allocate a claimed 4 GiB. In an
  // archive of 4 GiB or more they are genuine and left to LibTorch's checks;
  // in a smaller one only a zip64 end record for 65535 entries or more is
  // (LibTorch's writer makes one), and it must lie inside the file.
  constexpr uint64_t kZip64 = 0xffffffff;
  const bool large = size >= (uint64_t{1} << 32);
  if (entries == 0xffff || directory_offset == kZip64 || directory_size == kZip64) {
    if (large) return;
    if (end < 20 || le32(bytes + end - 20) != 0x07064b50) refuse("zip64 fields in a file under 4 GiB");
    const uint64_t record = le64(bytes + end - 20 + 8);
    if (record > end - 20 || end - 20 - record < 56 || le32(bytes + record) != 0x06064b50) {
      refuse("a damaged zip64 end record");
    }
    entries = le64(bytes + record + 32);
    directory_size = le64(bytes + record + 40);
    directory_offset = le64(bytes + record + 48);
    if (entries < 0xffff || directory_offset > record || directory_size > record - directory_offset ||
        entries > directory_size / 46) {
      refuse("zip64 fields in a file under 4 GiB");
    }
    end = record;  // the directory ends where the zip64 record starts
  }
  if (directory_offset + directory_size > end) refuse("its zip directory points past the end of the file");
  bool has_pickle = false;
  size_t at = directory_offset;
  for (size_t i = 0; i < entries; ++i) {
    if (at + 46 > end || le32(bytes + at) != 0x02014b50) refuse("a damaged zip directory");
    const uint16_t method = le16(bytes + at + 10);
    const uint64_t compressed = le32(bytes + at + 20), uncompressed = le32(bytes + at + 24);
    const size_t name_length = le16(bytes + at + 28), extra = le16(bytes + at + 30), comment = le16(bytes + at + 32);
    const uint64_t local = le32(bytes + at + 42);
    if (at + 46 + name_length > end) refuse("a damaged zip directory");
    const std::string entry(reinterpret_cast<const char*>(bytes + at + 46), name_length);
    if (compressed == kZip64 || uncompressed == kZip64 || local == kZip64) {
      if (!large) refuse("zip64 fields in a file under 4 GiB");
      return;
    }
    if (method != 0 || compressed != uncompressed) refuse("entry " + printable_excerpt(entry) + " is compressed; torch.save writes stored entries");
    // The data starts after the local header, whose name and extra field may
    // differ in length from the directory's.
    if (local + 30 > size || le32(bytes + local) != 0x04034b50) {
      refuse("entry " + printable_excerpt(entry) + " has no local header where the directory says");
    }
    const uint64_t data_start = local + 30 + le16(bytes + local + 26) + le16(bytes + local + 28);
    if (data_start + uncompressed > size) {
      refuse("entry " + printable_excerpt(entry) + " claims " + std::to_string(uncompressed) +
             " bytes past the end of the file");
    }
    const size_t slash = entry.find('/');
    has_pickle = has_pickle || (slash != std::string::npos && entry.compare(slash, std::string::npos, "/data.pkl") == 0);
    at += 46 + name_length + extra + comment;
  }
  if (!has_pickle) refuse("no data.pkl entry: not a file written by torch.save");
}

namespace {

// The unpickler's stack, simulated: what each opcode pops and pushes, the
// marks, the memo and how deeply containers nest. LibTorch 1.13's unpickler
// trusts the pickle here: an opcode that pops an empty stack or a missing mark
// reads out of bounds (a SEGV found by the weights fuzz harness; upstream
// pytorch/pytorch#94300), a list appended into itself is a reference cycle
// that is never freed, and containers nested a million deep overflow the call
// stack when they are destroyed. A torch.save pickle does none of these: it
// builds each container fully before it puts it into another, nests a few
// levels deep and ends with one value on the stack.
class PickleStack {
 public:
  using Refuse = std::function<void(const std::string&)>;
  explicit PickleStack(Refuse refuse) : refuse_(std::move(refuse)) {}

  void mark() { marks_.push_back(stack_.size()); }
  void push_leaf() { stack_.push_back(kLeaf); }
  // Pops `count` values above the top mark; returns them bottom first.
  std::vector<uint32_t> pop(size_t count) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() < floor + count) refuse_("a pickle opcode pops more values than the stack holds");
    std::vector<uint32_t> values(stack_.end() - static_cast<std::ptrdiff_t>(count), stack_.end());
    stack_.resize(stack_.size() - count);
    return values;
  }
  // Pops everything above the top mark, and the mark.
  std::vector<uint32_t> pop_to_mark() {
    if (marks_.empty()) refuse_("a pickle opcode needs a MARK that is not there");
    std::vector<uint32_t> values(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return values;
  }
  uint32_t top() {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) refuse_("a pickle opcode reads a value the stack does not hold");
    return stack_.back();
  }
  // A new container holding `children`, which can no longer change.
  void push_container(const std::vector<uint32_t>& children) {
    uint32_t depth = 1;
    for (uint32_t child : children) {
      depth = std::max(depth, depth_of(child) + 1);
      seal(child);
    }
    push_object(depth, false);
  }
  // What a REDUCE or BUILD leaves: it may be (part of) its argument.
  void push_result(uint32_t callable, uint32_t argument) {
    const uint32_t depth = std::max(depth_of(callable), depth_of(argument));
    // An argument that holds containers may hand one back (build_intlist
    // does): the result may then be a container that is already inside
    // another, so it must not change.
    push_object(depth, depth > 1);
    seal(argument);
  }
  // Puts `children` into the container at `target` (APPEND, SETITEM, ...).
  void fill(uint32_t target, const std::vector<uint32_t>& children) {
    if (target == kLeaf) return;  // not a container: LibTorch refuses it
    Object& object = objects_[target];
    if (object.sealed) refuse_("a pickle changes a container after putting it into another");
    for (uint32_t child : children) {
      if (child == target) refuse_("a pickle puts a container into itself");
      object.depth = std::max(object.depth, depth_of(child) + 1);
      seal(child);
    }
    check_depth(object.depth);
  }
  // The value below the top mark (APPENDS and SETITEMS fill it).
  uint32_t below_mark() {
    if (marks_.empty()) refuse_("a pickle opcode needs a MARK that is not there");
    const size_t floor = marks_.size() > 1 ? marks_[marks_.size() - 2] : 0;
    if (marks_.back() <= floor) refuse_("a pickle opcode fills a container the stack does not hold");
    return stack_[marks_.back() - 1];
  }
  void dup() { stack_.push_back(top()); }
  void put(uint64_t id) { memo_[id] = top(); }
  void memoize() { memo_[memo_.size()] = top(); }
  void get(uint64_t id) {
    const auto found = memo_.find(id);
    if (found == memo_.end()) refuse_("a pickle reads a memo entry it never wrote");
    stack_.push_back(found->second);
  }
  void stop() {
    if (stack_.size() != 1 || !marks_.empty()) {
      refuse_("the pickle ends with " + std::to_string(stack_.size()) + " values and " +
              std::to_string(marks_.size()) + " marks instead of one value");
    }
  }

 private:
  static constexpr uint32_t kLeaf = 0;
  static constexpr uint32_t kMaxDepth = 100;
  struct Object {
    uint32_t depth;
    bool sealed;
  };
  uint32_t depth_of(uint32_t id) const { return id == kLeaf ? 0 : objects_[id].depth; }
  void seal(uint32_t id) {
    if (id != kLeaf) objects_[id].sealed = true;
  }
  void check_depth(uint32_t depth) {
    if (depth > kMaxDepth) refuse_("containers in the pickle nest more than " + std::to_string(kMaxDepth) + " deep");
  }
  void push_object(uint32_t depth, bool sealed) {
    check_depth(depth);
    objects_.push_back({depth, sealed});
    stack_.push_back(static_cast<uint32_t>(objects_.size() - 1));
  }

  Refuse refuse_;
  std::vector<Object> objects_{{0, true}};  // id 0: every leaf (numbers, strings, tensors, None)
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
};

}  // namespace

// Walks the pickle's opcodes before LibTorch's unpickler runs them: every
// opcode must be one a torch.save pickle (protocol 2) may hold, every length
// an opcode claims must fit in what is left, and the stack effects must be
// sound (PickleStack). LibTorch 1.13 reserves a claimed string length before
// reading it, so a 4-byte length of 4 GB is an allocation of 4 GB
// (pytorch/pytorch#185443); memo ids are bounded the same way.
void check_pickle_layout(const std::string& pickle, const std::string& name) {
  auto refuse = [&](const std::string& problem) {
    throw Error("cannot read weights from " + name + " (" + problem + "); " + kResaveHint);
  };
  const auto* bytes = reinterpret_cast<const uint8_t*>(pickle.data());
  const size_t size = pickle.size();
  size_t at = 0;
  // Skips `count` argument bytes, or to and past the next newline (count < 0).
  auto skip = [&](int64_t count) {
    if (count < 0) {
      const size_t newline = pickle.find('\n', at);
      if (newline == std::string::npos) refuse("a pickle opcode's argument runs past the end");
      at = newline + 1;
    } else {
      if (static_cast<uint64_t>(count) > size - at) refuse("a pickle opcode claims more bytes than the file holds");
      at += static_cast<size_t>(count);
    }
  };
  auto length = [&](int width) -> uint64_t {
    if (static_cast<size_t>(width) > size - at) refuse("a pickle opcode's length runs past the end");
    uint64_t value = 0;
    for (int i = width - 1; i >= 0; --i) value = value << 8 | bytes[at + static_cast<size_t>(i)];
    at += static_cast<size_t>(width);
    return value;
  };
  // LibTorch sizes its memo table by the largest id; a pickle puts at most
  // one memo per byte, so a larger id is a damaged file.
  auto memo_id = [&](int width) {
    const uint64_t id = length(width);
    if (id >= size) refuse("a pickle memo id past the pickle's size");
    return id;
  };
  PickleStack stack(refuse);
  while (at < size) {
    const uint8_t opcode = bytes[at++];
    switch (opcode) {
      case '.': stack.stop(); return;                     // STOP
      case '(': stack.mark(); break;                      // MARK
      case '0': stack.pop(1); break;                      // POP
      case '1': stack.pop_to_mark(); break;               // POP_MARK
      case '2': stack.dup(); break;                       // DUP
      case 'N': case 0x88: case 0x89: stack.push_leaf(); break;  // None, True, False
      case ')': case ']': case '}': case 0x8f: stack.push_container({}); break;  // empty containers
      case 't': case 'l': case 'd': case 0x91: stack.push_container(stack.pop_to_mark()); break;
      case 0x85: stack.push_container(stack.pop(1)); break;  // TUPLE1..3
      case 0x86: stack.push_container(stack.pop(2)); break;
      case 0x87: stack.push_container(stack.pop(3)); break;
      case 'a': {                                          // APPEND
        const auto item = stack.pop(1);
        stack.fill(stack.top(), item);
        break;
      }
      case 's': {                                          // SETITEM
        const auto item = stack.pop(2);
        stack.fill(stack.top(), item);
        break;
      }
      case 'e': case 'u': case 0x90: {                     // APPENDS, SETITEMS, ADDITEMS
        const uint32_t target = stack.below_mark();
        stack.fill(target, stack.pop_to_mark());
        break;
      }
      case 'R': case 'b': {                                // REDUCE, BUILD
        const auto call = stack.pop(2);
        stack.push_result(call[0], call[1]);
        break;
      }
      case 0x81: stack.pop(1); stack.top(); break;         // NEWOBJ: pops the arguments
      case 0x92: stack.pop(2); stack.top(); break;         // NEWOBJ_EX
      case 0x93: stack.pop(2); stack.push_leaf(); break;   // STACK_GLOBAL
      case 'Q': stack.pop(1); stack.push_leaf(); break;    // BINPERSID: a tensor
      case 0x94: stack.memoize(); break;                   // MEMOIZE
      case 0x80: skip(1); break;                           // PROTO
      case 0x95: skip(8); break;                           // FRAME
      case 'q': stack.put(memo_id(1)); break;              // BINPUT
      case 'r': stack.put(memo_id(4)); break;              // LONG_BINPUT
      case 'h': stack.get(memo_id(1)); break;              // BINGET
      case 'j': stack.get(memo_id(4)); break;              // LONG_BINGET
      case 'K': skip(1); stack.push_leaf(); break;         // BININT1
      case 'M': skip(2); stack.push_leaf(); break;         // BININT2
      case 'J': skip(4); stack.push_leaf(); break;         // BININT
      case 'G': skip(8); stack.push_leaf(); break;         // BINFLOAT
      case 'c': skip(-1); skip(-1); stack.push_leaf(); break;  // GLOBAL module\nname\n
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': skip(-1); stack.push_leaf(); break;
      case 'p': case 'g': {                                // PUT, GET with a decimal id
        const size_t line = at;
        skip(-1);
        uint64_t id = 0;
        for (size_t i = line; i + 1 < at; ++i) {
          if (bytes[i] < '0' || bytes[i] > '9' || id >= size) refuse("a damaged pickle memo id");
          id = id * 10 + (bytes[i] - '0');
        }
        if (opcode == 'p') stack.put(id); else stack.get(id);
        break;
      }
      case 'U': case 'C': case 0x8a: case 0x8c:            // short strings, LONG1, SHORT_BINUNICODE
        skip(static_cast<int64_t>(length(1)));
        stack.push_leaf();
        break;
      case 'X': case 'T': case 'B': case 0x8b: {           // BINUNICODE, BINSTRING, BINBYTES, LONG4
        const uint64_t count = length(4);
        if (count > size - at) refuse("a pickle string claims " + std::to_string(count) + " bytes past the end");
        skip(static_cast<int64_t>(count));
        stack.push_leaf();
        break;
      }
      case 0x8d: case 0x8e: case 0x96: {                   // BINUNICODE8, BINBYTES8, BYTEARRAY8
        const uint64_t count = length(8);
        if (count > size - at) refuse("a pickle string claims " + std::to_string(count) + " bytes past the end");
        skip(static_cast<int64_t>(count));
        stack.push_leaf();
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", opcode);
        refuse(std::string("pickle opcode ") + hex + " is not one torch.save writes");
      }
    }
  }
  refuse("the pickle has no STOP opcode: truncated");
}

}  // namespace dtrain
