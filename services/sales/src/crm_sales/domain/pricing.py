"""Quote arithmetic, exact to the cent (Decimal, round half up), and nothing else: no database, no I/O.

Prices are tax exclusive. Per line: list = quantity × unit price; line discount = list × line %; net = list −
line discount. The overall discount is a percent of the subtotal (Σ net), shared out over the lines in
proportion to their net with the largest-remainder rule, so the shares add up to it exactly; each line's tax
is its rate on its net after its share. Total = subtotal − overall discount + Σ tax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from crm_sales.domain.common import CENT, money

HUNDRED = Decimal(100)


@dataclass(frozen=True)
class Line:
    product_id: str
    product_code: str
    description: str
    unit: str
    quantity: Decimal
    unit_price: Decimal
    discount_percent: Decimal
    tax_rate: Decimal


@dataclass
class Priced:
    lines: list[dict[str, str]] = field(default_factory=list)
    list_total: Decimal = Decimal(0)
    subtotal: Decimal = Decimal(0)
    overall_discount_amount: Decimal = Decimal(0)
    discount_total: Decimal = Decimal(0)
    effective_discount_percent: Decimal = Decimal(0)
    tax_total: Decimal = Decimal(0)
    total: Decimal = Decimal(0)

    def exceeds(self, threshold_percent: Decimal) -> bool:
        """Is the total discount above `threshold_percent` of the list total (compared exactly, unrounded)?"""
        return self.discount_total * HUNDRED > threshold_percent * self.list_total


def share_out(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """`amount` in cents over `weights` proportionally; the parts add up to `amount` exactly."""
    total = sum(weights, Decimal(0))
    if not weights or total == 0 or amount == 0:
        return [Decimal(0)] * len(weights)
    raw = [amount * w / total for w in weights]
    floors = [r.quantize(CENT, rounding=ROUND_DOWN) for r in raw]
    left = int(((amount - sum(floors, Decimal(0))) / CENT).to_integral_value())
    order = sorted(range(len(raw)), key=lambda i: (raw[i] - floors[i], -i), reverse=True)
    for i in order[:left]:
        floors[i] += CENT
    return floors


def price(lines: list[Line], overall_percent: Decimal) -> Priced:
    out = Priced()
    nets, line_discounts, lists = [], [], []
    for line in lines:
        list_amount = money(line.quantity * line.unit_price)
        discount = money(list_amount * line.discount_percent / HUNDRED)
        lists.append(list_amount)
        line_discounts.append(discount)
        nets.append(list_amount - discount)
    out.list_total = sum(lists, Decimal(0))
    out.subtotal = sum(nets, Decimal(0))
    out.overall_discount_amount = money(out.subtotal * overall_percent / HUNDRED)
    shares = share_out(out.overall_discount_amount, nets)
    for line, list_amount, discount, net, share in zip(
        lines, lists, line_discounts, nets, shares, strict=True
    ):
        tax = money((net - share) * line.tax_rate / HUNDRED)
        out.tax_total += tax
        out.lines.append(
            {
                "product_id": line.product_id,
                "product_code": line.product_code,
                "description": line.description,
                "unit": line.unit,
                "quantity": format(line.quantity, "f"),
                "unit_price": format(line.unit_price, "f"),
                "discount_percent": format(line.discount_percent, "f"),
                "list_amount": format(list_amount, "f"),
                "discount_amount": format(discount, "f"),
                "net_amount": format(net, "f"),
                "tax_rate": format(line.tax_rate, "f"),
                "tax_amount": format(tax, "f"),
            }
        )
    out.discount_total = sum(line_discounts, Decimal(0)) + out.overall_discount_amount
    out.effective_discount_percent = (
        money(out.discount_total * HUNDRED / out.list_total) if out.list_total else Decimal(0)
    )
    out.total = out.subtotal - out.overall_discount_amount + out.tax_total
    return out
