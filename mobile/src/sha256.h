// SHA-256 (FIPS 180-4), self-contained so that the same code builds for the Linux host,
// linux-aarch64 and Android, where no common crypto library is available (no OpenSSL on Android).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace shifter {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  // Returns the lowercase hex digest; the object must not be updated afterwards.
  std::string hex_digest();

 private:
  void compress(const uint8_t block[64]);

  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Hashes a whole file in chunks. Throws std::runtime_error naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace shifter
