"""Keeps a region's allotments topped up and its leases renewed: the agent's side of the center.

- Refills start when what is left falls below the low-water mark; at most one acquire per
  promotion is in flight, and every order short of quota waits on that same one.
- The renew loop renews the region lease (one lease over every promotion of the region, each
  measured from when its call was sent, so clock skew cannot stretch it) and reports cumulative
  counters only for the promotions whose counters or demand moved since the center took in their
  last report, or whose word from the center the agent needs (an acquire whose answer may be lost,
  a refused report, exhausted quota it wants, a closed promotion it still holds): an idle promotion
  costs nothing. It reports every promotion it knows (also those it holds nothing of, so the center
  learns their demand) in its first round, when the center asks (a new leader), and while the center
  does not renew the region lease (a center older than it), in calls of at most MAX_RENEWAL. It applies
  grants whose answer was lost and gives back quota the center reclaims or a freeze releases.
- Promotions come from the cache (fed by `CatalogSync`); a promotion the cache does not know
  is fetched once, however many orders wait for it, and one the center does not know is
  remembered as unknown for a few seconds. A freeze, by whichever link it arrives, gives the
  promotion's unspent allotment back at once.
- While the center is away, renewals are retried every fraction of a second, so the region
  serves again as soon as it is back. Once the center says a newer process of the region
  replaced this one, nothing more is spent or asked for (`retired` says why).
- Openings: promotions that start within the look-ahead get an opening allotment before they
  start, many in one call, so the first orders of a midnight sale do not wait on the center.
- Center groups: each promotion's calls go to the group that serves it, and each group has its renew loop
  and its region lease (`CenterGroups`); a promotion handed to another group is drained by the old one
  (its renewals reclaim what the region holds, which goes back there) and acquired from the new one.

The core (tracking, refills, give-backs, the ledger life) is `supply_core`, the renew loops `supply_renewals`;
this module adds the openings (sent per group, by where the agent believes each promotion is served; one
refused there is looked up again, which follows the refusal of its former group to its owner).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

from quota_common import policy
from quota_common.errors import QuotaError, Superseded
from quota_common.model import Promotion
from quota_common.validation import MAX_OPENINGS
from region_agent.ledger.base import Balance
from region_agent.supply_renewals import SupplyRenewals

log = logging.getLogger(__name__)


class Supply(SupplyRenewals):
    async def open_forever(self, lookahead_s: float) -> None:
        while True:
            # Every second, at a phase of its own: the region's agents do not open in step, and
            # the second finds what the first opened in the shared ledger.
            await asyncio.sleep(random.uniform(0.5, 1.5))
            try:
                await self.open_upcoming(lookahead_s)
            except Superseded:
                return  # said once, by `_ask`
            except QuotaError as error:
                log.warning("opening allotments not acquired yet (%s); retrying", error.message)

    async def open_upcoming(self, lookahead_s: float) -> None:
        """Opening allotments for the region's promotions that start within `lookahead_s` and
        that this incarnation holds nothing of yet."""
        now_ms = self._clock.wall_ms()
        balances = await self._ledger.balances()
        upcoming = [
            promotion
            for promotion in self.cache.starting(now_ms, now_ms + round(lookahead_s * 1000))
            if promotion.allows(self._region)
            and not promotion.frozen
            and balances.get(promotion.id, Balance()).granted == 0
        ]
        # Each group's openings on their own: one group's outage delays only its promotions'.
        outcomes = await asyncio.gather(
            *(
                self._open_at(group, [p for p in upcoming if self._groups.owners.owner(p.id) == group])
                for group in self._groups.names
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _open_at(self, group: str, promotions: list[Promotion]) -> None:
        for first in range(0, len(promotions), MAX_OPENINGS):
            await self._open(group, promotions[first : first + MAX_OPENINGS])

    async def _open(self, group: str, promotions: list[Promotion]) -> None:
        requests = []
        for promotion in promotions:
            request_id = self._opening_requests.setdefault(promotion.id, uuid.uuid4().hex)
            amount = policy.opening_amount(self._refill_settings, promotion.budget, len(promotion.regions))
            requests.append((promotion.id, amount, request_id))
        life = await self._life()
        sent = self._clock.monotonic()
        self._reports[group].asked(promotion.id for promotion in promotions)
        answers, lease_ttl_s = await self._ask(self._groups.port(group).acquire_openings(life, requests))
        for answer in answers:
            if not answer.grant_id:
                log.info("no opening allotment of %s: %s", answer.promotion_id, answer.refusal)
                await self._opening_refused(answer.promotion_id, answer.refusal)
                continue
            self._opening_refusals.pop(answer.promotion_id, None)
            await self._ledger.apply_grant(answer.grant_id, answer.promotion_id, answer.amount, life)
            item = await self._track_one(answer.promotion_id)
            item.lease_until = sent + self._heard(lease_ttl_s)
            item.last_grant = answer.amount

    async def _opening_refused(self, promotion_id: str, refusal: str) -> None:
        """An opening's refusal is a text, without the owner a refusal of a call names: when the promotion may
        have moved to another group, a fetch where the agent sends it follows the refusal to its owner, and the
        next round opens it there. Once per refusal text, not every round."""
        if len(self._groups.names) > 1 and self._opening_refusals.get(promotion_id) != refusal:
            self._opening_refusals[promotion_id] = refusal
            await self._relocate(promotion_id)
