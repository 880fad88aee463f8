"""ffebm_sim.recent: the caches of values built from frozen circuits."""


def test_recent_by_identity_keys_by_the_object_not_its_value():
    from ffebm_sim.recent import RecentByIdentity
    cache, built = RecentByIdentity(2), []
    a, b, c = [1], [1], [2]                       # a == b, yet two objects
    get = lambda obj, key=None: cache.get(obj, key, lambda: built.append(obj) or len(built))
    assert get(a) == 1 and get(a) == 1 and get(b) == 2      # equal but distinct: built again
    assert get(a, "other key") == 3
    assert get(c) == 4 and get(a) == 5                       # a's oldest entries were dropped (size 2)


def test_a_pickled_cache_arrives_empty():
    import pickle
    from ffebm_sim.recent import RecentByIdentity
    cache = RecentByIdentity(3)
    cache.get(object(), None, lambda: 1)
    again = pickle.loads(pickle.dumps(cache))
    assert again.size == 3 and again.get(object(), None, lambda: 2) == 2
