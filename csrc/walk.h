// Random walks through a Matcher: the soundness fuzzer behind the decoder's tests. Each walk
// picks any allowed token at every step and checks the mask against accept().
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "grammar.h"

namespace qpfast {

struct WalkResult {
  std::string text;   // the output (bytes)
  int tokens = 0;     // accepted tokens, end token included
  int forced = 0;     // steps whose mask was a single forced token
  std::string error;  // empty when the walk ended cleanly
};

// One walk per query (max_tokens[i] < 0: no budget). `bias_end`: probability of picking,
// when there are any, a token that closes a string or list, so walks also exercise endings.
std::vector<WalkResult> random_walks(std::shared_ptr<const Grammar> grammar, const std::vector<std::string>& normalized,
                                     const std::vector<int>& max_tokens, uint64_t seed, double bias_end);

}  // namespace qpfast
