"""SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020): secure summation of the devices'
updates in which an honest-but-curious server learns only the sum of the inputs that survived, even
when devices drop out at any stage. This package is what the device and the server share; the
server's side is `coordinator.secagg.protocol`. Nothing here does I/O.

* `crypto`: X25519 key pairs, HKDF-SHA256 pairwise keys, AES-GCM share encryption, the AES-CTR PRG.
* `shamir`: t-out-of-n sharing of 32-byte secrets over GF(2^256 + 297).
* `fixedpoint`: clipping and fixed-point encoding of float updates into Z_{2^32}, and back.
* `groups`: what the vector's coordinates mean: the update and statistics groups, each at its own clip and
  scale, and the device's weight.
* `graph`: the random Harary neighbour graph and the choice of (k, t).
* `messages`: the round's public parameters and the four stages' wire models.
* `device`: a device's side, an immutable state the agent persists between stages.

A round, in the paper's stages (Sec. 3):

0. AdvertiseKeys: each device sends two public keys (c_u^PK for share encryption, s_u^PK for masking).
1. ShareKeys: each device Shamir-shares its self-mask seed b_u and its masking key s_u^SK among its
   graph neighbours that advertised, encrypting each neighbour's pair of shares to that neighbour.
2. MaskedInputCollection: each device that shared keys sends y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv)
   mod 2^32 over its neighbours v that also shared keys; the server sums the y_u it receives.
3. Unmasking: each device that sent y_u reveals, for each neighbour, the share of b_v if v's input
   arrived or of s_v^SK if it did not; the server reconstructs those secrets from t shares each and
   strips every remaining mask from the sum."""
