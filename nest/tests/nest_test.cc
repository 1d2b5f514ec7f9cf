// Tests of nest::Nest<T> and the free functions map_many, map2 and zip.
#include "nest/nest.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace nest {
namespace {

using IntNest = Nest<int>;

// {"a": 1, "b": [2, 3], "c": {"d": 4}}: a map, a vector and a nested map.
IntNest Sample() {
  return IntNest(IntNest::Map{
      {"a", IntNest(1)},
      {"b", IntNest(IntNest::Vector{IntNest(2), IntNest(3)})},
      {"c", IntNest(IntNest::Map{{"d", IntNest(4)}})},
  });
}

// Runs `f` and returns the NestError message; fails the test if nothing is thrown.
template <typename F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const NestError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no NestError thrown";
  return "";
}

TEST(NestTest, KindsAndAccessors) {
  IntNest leaf(7);
  EXPECT_TRUE(leaf.is_leaf());
  EXPECT_FALSE(leaf.is_vector());
  EXPECT_FALSE(leaf.is_map());
  EXPECT_EQ(leaf.leaf(), 7);
  leaf.leaf() = 8;
  EXPECT_EQ(leaf.leaf(), 8);

  IntNest vec(IntNest::Vector{IntNest(1), IntNest(2)});
  EXPECT_TRUE(vec.is_vector());
  EXPECT_EQ(vec.vector().size(), 2u);
  EXPECT_EQ(vec.vector()[1].leaf(), 2);

  const IntNest sample = Sample();
  EXPECT_TRUE(sample.is_map());
  EXPECT_EQ(sample.map().at("c").map().at("d").leaf(), 4);
}

TEST(NestTest, WrongAccessorThrows) {
  IntNest vec(IntNest::Vector{IntNest(1), IntNest(2), IntNest(3)});
  EXPECT_EQ(ErrorOf([&] { vec.leaf(); }), "expected a leaf, got a vector of 3");
  EXPECT_EQ(ErrorOf([&] { Sample().vector(); }), "expected a vector, got a map with keys [a, b, c]");
  EXPECT_EQ(ErrorOf([&] { IntNest(1).map(); }), "expected a map, got a leaf");
}

TEST(NestTest, EmptyFrontAndSize) {
  EXPECT_FALSE(IntNest(0).empty());
  const IntNest empty_vector(IntNest::Vector{});
  const IntNest empty_map(IntNest::Map{});
  EXPECT_TRUE(empty_vector.empty());
  EXPECT_TRUE(empty_map.empty());
  // Containers without any leaf are empty, however deep.
  IntNest hollow(IntNest::Map{{"a", IntNest(IntNest::Vector{IntNest(IntNest::Map{})})}});
  EXPECT_TRUE(hollow.empty());
  EXPECT_EQ(hollow.size(), 0u);

  EXPECT_EQ(Sample().front(), 1);
  EXPECT_EQ(Sample().size(), 4u);
  // front() skips empty containers before the first leaf.
  IntNest late(IntNest::Vector{IntNest(IntNest::Vector{}), IntNest(IntNest::Map{{"x", IntNest(5)}})});
  EXPECT_EQ(late.front(), 5);
  EXPECT_EQ(ErrorOf([&] { hollow.front(); }), "front() of a nest without leaves");
}

TEST(NestTest, MapKeepsStructureAndChangesLeafType) {
  const Nest<std::string> strings = Sample().map([](int x) { return std::to_string(x * 10); });
  EXPECT_EQ(strings.flatten(), (std::vector<std::string>{"10", "20", "30", "40"}));
  EXPECT_EQ(strings.map([](const std::string& s) { return std::stoi(s) / 10; }), Sample());
}

TEST(NestTest, ForEachVisitsInFlattenOrder) {
  std::vector<int> seen;
  Sample().for_each([&seen](int x) { seen.push_back(x); });
  EXPECT_EQ(seen, (std::vector<int>{1, 2, 3, 4}));

  IntNest n = Sample();
  n.for_each([](int& x) { x += 100; });  // The non-const overload modifies leaves in place.
  EXPECT_EQ(n.flatten(), (std::vector<int>{101, 102, 103, 104}));
}

TEST(NestTest, FlattenVisitsMapsInSortedKeyOrder) {
  // Inserted out of order; std::map keeps the keys sorted.
  IntNest n(IntNest::Map{{"zeta", IntNest(1)}, {"alpha", IntNest(2)}, {"mid", IntNest(3)}});
  EXPECT_EQ(n.flatten(), (std::vector<int>{2, 3, 1}));
  EXPECT_EQ(IntNest(5).flatten(), (std::vector<int>{5}));
  const IntNest empty(IntNest::Vector{});
  EXPECT_TRUE(empty.flatten().empty());
}

TEST(NestTest, PackAsIsTheInverseOfFlatten) {
  const IntNest sample = Sample();
  EXPECT_EQ(sample.pack_as(sample.flatten()), sample);
  const Nest<double> halves = sample.pack_as(std::vector<double>{0.5, 1.5, 2.5, 3.5});
  EXPECT_EQ(halves.map().at("b").vector()[1].leaf(), 2.5);
  const IntNest empty(IntNest::Vector{});
  EXPECT_EQ(empty.pack_as(std::vector<int>{}), empty);
}

TEST(NestTest, PackAsWithWrongCountThrows) {
  EXPECT_EQ(ErrorOf([] {
              Sample().pack_as(std::vector<int>{1, 2, 3});
            }),
            "pack_as: the structure has 4 leaves, but 3 values were given");
  EXPECT_EQ(ErrorOf([] {
              Sample().pack_as(std::vector<int>{1, 2, 3, 4, 5});
            }),
            "pack_as: the structure has 4 leaves, but 5 values were given");
}

TEST(NestTest, Equality) {
  EXPECT_EQ(Sample(), Sample());
  EXPECT_NE(Sample(), Sample().map([](int x) { return x + 1; }));
  EXPECT_NE(IntNest(1), IntNest(IntNest::Vector{IntNest(1)}));
  EXPECT_NE(IntNest(IntNest::Map{{"a", IntNest(1)}}), IntNest(IntNest::Map{{"b", IntNest(1)}}));
  EXPECT_NE(IntNest(IntNest::Vector{IntNest(1)}), IntNest(IntNest::Vector{IntNest(1), IntNest(1)}));
}

TEST(NestTest, MapManyPassesLeavesInNestOrder) {
  const std::vector<IntNest> nests{Sample(), Sample().map([](int x) { return 10 * x; }),
                                   Sample().map([](int x) { return 100 * x; })};
  const IntNest sums = map_many(
      [](const std::vector<const int*>& leaves) {
        EXPECT_EQ(leaves.size(), 3u);
        return *leaves[0] + *leaves[1] + *leaves[2];
      },
      nests);
  EXPECT_EQ(sums.flatten(), (std::vector<int>{111, 222, 333, 444}));

  const Nest<int> firsts =
      map_many([](const std::vector<const int*>& leaves) { return *leaves[0]; }, std::vector<IntNest>{Sample()});
  EXPECT_EQ(firsts, Sample());
}

TEST(NestTest, MapManyMismatchNamesThePath) {
  IntNest other(IntNest::Map{
      {"a", IntNest(1)},
      {"b", IntNest(IntNest::Vector{IntNest(2), IntNest(IntNest::Vector{IntNest(3)})})},
      {"c", IntNest(IntNest::Map{{"d", IntNest(4)}})},
  });
  int calls = 0;
  auto count = [&calls](const std::vector<const int*>&) { return ++calls; };
  EXPECT_EQ(ErrorOf([&] {
              map_many(count, std::vector<IntNest>{Sample(), other});
            }),
            "nests differ at ['b'][1]: nest 0 has a leaf, nest 1 has a vector of 1");
  EXPECT_EQ(calls, 0) << "f must not be called when the structures differ";

  IntNest short_b(IntNest::Map{
      {"a", IntNest(1)},
      {"b", IntNest(IntNest::Vector{IntNest(2)})},
      {"c", IntNest(IntNest::Map{{"d", IntNest(4)}})},
  });
  EXPECT_EQ(ErrorOf([&] {
              map_many(count, std::vector<IntNest>{Sample(), Sample(), short_b});
            }),
            "nests differ at ['b']: nest 0 has a vector of 2, nest 2 has a vector of 1");

  IntNest other_keys(IntNest::Map{
      {"a", IntNest(1)},
      {"b", IntNest(IntNest::Vector{IntNest(2), IntNest(3)})},
      {"c", IntNest(IntNest::Map{{"e", IntNest(4)}})},
  });
  EXPECT_EQ(ErrorOf([&] {
              map_many(count, std::vector<IntNest>{Sample(), other_keys});
            }),
            "nests differ at ['c']: nest 0 has a map with keys [d], "
            "nest 1 has a map with keys [e]");

  EXPECT_EQ(ErrorOf([&] {
              map_many(count, std::vector<IntNest>{IntNest(1), Sample()});
            }),
            "nests differ at the root: nest 0 has a leaf, nest 1 has a map with keys [a, b, c]");
  EXPECT_EQ(ErrorOf([&] { map_many(count, std::vector<IntNest>{}); }), "map_many needs at least one nest");
}

TEST(NestTest, Map2CombinesLeavesOfDifferentTypes) {
  const Nest<std::string> names = Sample().map([](int x) { return std::string(x, 'x'); });
  const Nest<std::string> joined =
      map2([](int n, const std::string& s) { return std::to_string(n) + s; }, Sample(), names);
  EXPECT_EQ(joined.flatten(), (std::vector<std::string>{"1x", "2xx", "3xxx", "4xxxx"}));
}

TEST(NestTest, Map2MismatchNamesThePath) {
  const Nest<double> other(Nest<double>::Map{
      {"a", Nest<double>(1.0)}, {"b", Nest<double>(Nest<double>::Vector{})}, {"c", Nest<double>(2.0)}});
  int calls = 0;
  auto f = [&calls](int, double) { return ++calls; };
  EXPECT_EQ(ErrorOf([&] { map2(f, Sample(), other); }),
            "nests differ at ['b']: nest 0 has a vector of 2, nest 1 has a vector of 0");
  EXPECT_EQ(calls, 0);
}

TEST(NestTest, ZipGathersLeaves) {
  const Nest<std::vector<int>> zipped = zip(std::vector<IntNest>{Sample(), Sample().map([](int x) { return -x; })});
  EXPECT_EQ(zipped.map().at("b").vector()[0].leaf(), (std::vector<int>{2, -2}));
  EXPECT_EQ(zipped.front(), (std::vector<int>{1, -1}));
  EXPECT_EQ(ErrorOf([] {
              zip(std::vector<IntNest>{Sample(), IntNest(1)});
            }),
            "nests differ at the root: nest 0 has a map with keys [a, b, c], nest 1 has a leaf");
}

// Move-only leaves: the nest can be built, mapped, flattened by move and packed from a moved
// vector without copying a leaf.
using PtrNest = Nest<std::unique_ptr<int>>;

PtrNest PtrSample() {
  PtrNest::Vector inner;
  inner.emplace_back(std::make_unique<int>(2));
  inner.emplace_back(std::make_unique<int>(3));
  PtrNest::Map map;
  map.emplace("a", PtrNest(std::make_unique<int>(1)));
  map.emplace("b", PtrNest(std::move(inner)));
  return PtrNest(std::move(map));
}

TEST(NestTest, MoveOnlyLeaves) {
  PtrNest n = PtrSample();
  EXPECT_EQ(*n.front(), 1);
  EXPECT_EQ(n.size(), 3u);
  const IntNest values = n.map([](const std::unique_ptr<int>& p) { return *p; });
  EXPECT_EQ(values.flatten(), (std::vector<int>{1, 2, 3}));

  const int* second = n.map().at("b").vector()[0].leaf().get();
  std::vector<std::unique_ptr<int>> flat = std::move(n).flatten();
  ASSERT_EQ(flat.size(), 3u);
  EXPECT_EQ(flat[1].get(), second) << "flatten()&& must move, not copy";

  PtrNest packed = PtrSample().pack_as(std::move(flat));
  EXPECT_EQ(packed.map().at("b").vector()[0].leaf().get(), second);
  EXPECT_EQ(*packed.map().at("b").vector()[1].leaf(), 3);

  const IntNest sums =
      map_many([](const std::vector<const std::unique_ptr<int>*>& leaves) { return **leaves[0] + **leaves[1]; },
               [] {
                 std::vector<PtrNest> nests;
                 nests.push_back(PtrSample());
                 nests.push_back(PtrSample());
                 return nests;
               }());
  EXPECT_EQ(sums.flatten(), (std::vector<int>{2, 4, 6}));
}

}  // namespace
}  // namespace nest
