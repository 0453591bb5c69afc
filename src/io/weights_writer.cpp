// Writing weights files: the bytes torch.save writes (a zip of stored
// records) straight from the tensors' memory, with CRC-32 (libdeflate) and
// XXH3-128 on the way.
#include "io/weights.h"

#include "common/error.h"
#include "io/files.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/torch.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace dtrain {

namespace {

void put16(std::string& out, uint16_t value) {
  out += static_cast<char>(value & 0xff);
  out += static_cast<char>(value >> 8);
}
void put32(std::string& out, uint32_t value) {
  put16(out, static_cast<uint16_t>(value & 0xffff));
  put16(out, static_cast<uint16_t>(value >> 16));
}

// Writes to a file, hashing every byte on the way.
class HashingWriter {
 public:
  explicit HashingWriter(const std::string& path) : path_(path) {
    descriptor_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (descriptor_ < 0) throw Error(io_failure("write", path));
  }
  ~HashingWriter() {
    if (descriptor_ >= 0) ::close(descriptor_);
  }
  void write(const void* bytes, size_t size) {
    const char* next = static_cast<const char*>(bytes);
    while (size > 0) {
      const size_t chunk = std::min<size_t>(size, size_t{8} << 20);
      digest_.update(next, chunk);
      write_all(descriptor_, next, chunk, path_);
      // Start writing this chunk back now, so that the final fsync has
      // little left to wait for (Linux; elsewhere the fsync does it all).
#ifdef SYNC_FILE_RANGE_WRITE
      ::sync_file_range(descriptor_, static_cast<off64_t>(offset_), static_cast<off64_t>(chunk), SYNC_FILE_RANGE_WRITE);
#endif
      next += chunk;
      size -= chunk;
      offset_ += chunk;
    }
  }
  void write(const std::string& bytes) { write(bytes.data(), bytes.size()); }
  uint64_t offset() const { return offset_; }
  WrittenFile finish() {
    if (::fsync(descriptor_) != 0) throw Error(io_failure("sync", path_));
    const int descriptor = descriptor_;
    descriptor_ = -1;
    if (::close(descriptor) != 0) throw Error(io_failure("write", path_));
    return {offset_, digest_.hex()};
  }

 private:
  std::string path_;
  int descriptor_ = -1;
  Xxh3 digest_;
  uint64_t offset_ = 0;
};

}  // namespace

WrittenFile write_weights_file(const NamedTensors& tensors, const std::string& path) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : tensors) dict.insert(name, tensor.detach().cpu().contiguous());
  // The pickle, as torch.save writes it: each storage a persistent id, its
  // bytes a record of its own (what LibTorch's pickle_save does, minus its
  // copy of every byte into one buffer and miniz's slow CRC-32).
  std::string pickle;
  // Without type tags (tag_aggregates false): the dict is a plain dict, which
  // torch.load(weights_only=True), PyTorch 2.6's default, accepts.
  torch::jit::Pickler pickler([&](const char* bytes, size_t size) { pickle.append(bytes, size); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  struct Record {
    std::string name;
    const char* data;
    uint64_t size;
    uint32_t crc = 0;
    uint64_t offset = 0;  // of its local header
  };
  std::vector<torch::jit::WriteableTensorData> storages;
  for (const auto& tensor : pickler.tensorData()) storages.push_back(torch::jit::getWriteableTensorData(tensor));
  std::vector<Record> records;
  uint64_t total = pickle.size();
  for (size_t i = 0; i < storages.size(); ++i) {
    records.push_back({"archive/data/" + std::to_string(i), storages[i].data(), storages[i].sizeInBytes()});
    total += storages[i].sizeInBytes();
  }
  static const std::string kVersion = "3\n";  // the archive format LibTorch 1.13 and 2.x write and read
  records.push_back({"archive/data.pkl", pickle.data(), pickle.size()});
  records.push_back({"archive/version", kVersion.data(), kVersion.size()});
  if (total + 1024 * (records.size() + 1) >= (uint64_t{1} << 32) || records.size() >= 0xffff) {
    // Zip64 territory (4 GiB, or 65535 records): LibTorch's own zip writer,
    // fed the same untagged pickle and records, streaming through the hash.
    HashingWriter out(path);
    caffe2::serialize::PyTorchStreamWriter writer([&out](const void* bytes, size_t size) {
      out.write(bytes, size);
      return size;
    });
    for (size_t i = 0; i < storages.size(); ++i) {
      writer.writeRecord("data/" + std::to_string(i), storages[i].data(), storages[i].sizeInBytes());
    }
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
    return out.finish();
  }
  for (auto& record : records) {
    record.crc = crc32_of(record.data, record.size);
  }
  HashingWriter out(path);
  constexpr uint64_t kAlignment = 64;  // record data starts 64-byte aligned, as PyTorchStreamWriter does
  for (auto& record : records) {
    record.offset = out.offset();
    const uint64_t data_start = record.offset + 30 + record.name.size() + 4;
    const uint16_t padding = static_cast<uint16_t>((kAlignment - data_start % kAlignment) % kAlignment);
    std::string header;
    put32(header, 0x04034b50);
    put16(header, 20);  // version needed: 2.0
    put16(header, 0);   // flags
    put16(header, 0);   // stored
    put16(header, 0);   // time
    put16(header, 0x21);  // date: 1980-01-01
    put32(header, record.crc);
    put32(header, static_cast<uint32_t>(record.size));
    put32(header, static_cast<uint32_t>(record.size));
    put16(header, static_cast<uint16_t>(record.name.size()));
    put16(header, static_cast<uint16_t>(4 + padding));
    header += record.name;
    put16(header, 0x4246);  // "FB": padding, as PyTorchStreamWriter writes it
    put16(header, padding);
    header.append(padding, 'Z');
    out.write(header);
    out.write(record.data, record.size);
  }
  const uint64_t directory_offset = out.offset();
  std::string directory;
  for (const auto& record : records) {
    put32(directory, 0x02014b50);
    put16(directory, 20);  // made by
    put16(directory, 20);  // needed
    put16(directory, 0);
    put16(directory, 0);
    put16(directory, 0);
    put16(directory, 0x21);
    put32(directory, record.crc);
    put32(directory, static_cast<uint32_t>(record.size));
    put32(directory, static_cast<uint32_t>(record.size));
    put16(directory, static_cast<uint16_t>(record.name.size()));
    put16(directory, 0);  // extra
    put16(directory, 0);  // comment
    put16(directory, 0);  // disk
    put16(directory, 0);  // internal attributes
    put32(directory, 0);  // external attributes
    put32(directory, static_cast<uint32_t>(record.offset));
    directory += record.name;
  }
  std::string end;
  put32(end, 0x06054b50);
  put16(end, 0);
  put16(end, 0);
  put16(end, static_cast<uint16_t>(records.size()));
  put16(end, static_cast<uint16_t>(records.size()));
  put32(end, static_cast<uint32_t>(directory.size()));
  put32(end, static_cast<uint32_t>(directory_offset));
  put16(end, 0);
  out.write(directory);
  out.write(end);
  return out.finish();
}

}  // namespace dtrain
