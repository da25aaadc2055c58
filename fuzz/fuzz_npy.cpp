// Fuzzes the .npy parser. Properties: any bytes either parse or throw
// moe_eplb::Error (kIo); a parsed array serialises and parses back to the
// same dtype, shape, order and bytes.
#include <cstdlib>

#include "moe_eplb/error.hpp"
#include "moe_eplb/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe_eplb::npy::Array array;
  try {
    array = moe_eplb::npy::parse(data, size, "fuzz.npy");
  } catch (const moe_eplb::Error& error) {
    if (error.code() != moe_eplb::ErrorCode::kIo) std::abort();
    return 0;
  }
  const std::vector<std::uint8_t> bytes = moe_eplb::npy::serialize(array);
  const moe_eplb::npy::Array back = moe_eplb::npy::parse(bytes.data(), bytes.size(), "again.npy");
  if (back.dtype != array.dtype || back.shape != array.shape ||
      back.fortran_order != array.fortran_order || back.bytes != array.bytes) {
    std::abort();
  }
  return 0;
}
