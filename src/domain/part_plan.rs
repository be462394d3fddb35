//! How a multipart upload is cut into parts, within S3's limits: 1 to 10,000
//! parts; every part but the last 5 MiB to 5 GiB; at most 5 TiB in all.

use super::FieldError;

pub const MIB: u64 = 1024 * 1024;
pub const MAX_PARTS: u32 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 * MIB;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
pub const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * MIB;
/// The part size when the caller gives a total size and none.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartPlan {
    /// The caller sizes the parts; the store checks them at completion.
    Count(u32),
    /// `total` bytes in parts of `part_size` (the last one the rest).
    Sized { total: u64, part_size: u64 },
}

impl PartPlan {
    /// `part_count` parts (the `part_size` field must then be 0).
    pub fn by_count(part_count: u32, part_size: u64) -> Result<Self, FieldError> {
        if !(1..=MAX_PARTS).contains(&part_count) {
            return Err(FieldError::new(
                "part_count",
                format!("{part_count} parts: S3 takes 1 to {MAX_PARTS}"),
            ));
        }
        if part_size != 0 {
            return Err(FieldError::new(
                "part_size",
                "applies only with total_size (with part_count the parts are sized by the caller)",
            ));
        }
        Ok(Self::Count(part_count))
    }

    /// `total` bytes in parts of `part_size` (0: the default, grown to fit
    /// the object in 10,000 parts).
    pub fn by_size(total: u64, part_size: u64) -> Result<Self, FieldError> {
        if total == 0 || total > MAX_OBJECT_SIZE {
            return Err(FieldError::new(
                "total_size",
                format!("{total} bytes: S3 takes 1 byte to 5 TiB ({MAX_OBJECT_SIZE} bytes)"),
            ));
        }
        let part_size = match part_size {
            0 => DEFAULT_PART_SIZE.max(total.div_ceil(u64::from(MAX_PARTS)).div_ceil(MIB) * MIB),
            s if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&s) => {
                return Err(FieldError::new(
                    "part_size",
                    format!(
                        "{s} bytes: S3 takes 5 MiB ({MIN_PART_SIZE}) to 5 GiB ({MAX_PART_SIZE}) per part but the last"
                    ),
                ));
            }
            s => s,
        };
        let parts = total.div_ceil(part_size);
        if parts > u64::from(MAX_PARTS) {
            return Err(FieldError::new(
                "total_size",
                format!(
                    "{total} bytes in parts of {part_size} are {parts} parts: S3 takes at most {MAX_PARTS}; \
                     give a larger part_size"
                ),
            ));
        }
        Ok(Self::Sized { total, part_size })
    }

    pub fn count(&self) -> u32 {
        match *self {
            Self::Count(n) => n,
            Self::Sized { total, part_size } => {
                u32::try_from(total.div_ceil(part_size)).expect("at most 10,000 parts")
            }
        }
    }

    /// Part `n` (1-based): its offset and length, when the plan knows them.
    pub fn range(&self, n: u32) -> Option<(u64, u64)> {
        match *self {
            Self::Count(_) => None,
            Self::Sized { total, part_size } => {
                let offset = u64::from(n - 1) * part_size;
                Some((offset, part_size.min(total - offset)))
            }
        }
    }

    pub fn part_size(&self) -> Option<u64> {
        match *self {
            Self::Count(_) => None,
            Self::Sized { part_size, .. } => Some(part_size),
        }
    }

    pub fn total(&self) -> Option<u64> {
        match *self {
            Self::Count(_) => None,
            Self::Sized { total, .. } => Some(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_too_many_parts_are_refused_naming_part_count() {
        assert_eq!(PartPlan::by_count(0, 0).unwrap_err().field, "part_count");
        assert_eq!(
            PartPlan::by_count(10_001, 0).unwrap_err().field,
            "part_count"
        );
        assert_eq!(PartPlan::by_count(10_000, 0).unwrap().count(), 10_000);
    }

    #[test]
    fn a_part_size_under_5_mib_or_over_5_gib_is_refused() {
        let e = PartPlan::by_size(16 * MIB, 5 * MIB - 1).unwrap_err();
        assert_eq!(e.field, "part_size");
        let e = PartPlan::by_size(16 * MIB, MAX_PART_SIZE + 1).unwrap_err();
        assert_eq!(e.field, "part_size");
        assert_eq!(
            PartPlan::by_count(3, 5 * MIB).unwrap_err().field,
            "part_size"
        );
    }

    #[test]
    fn sizes_out_of_range_are_refused_naming_total_size() {
        assert_eq!(PartPlan::by_size(0, 0).unwrap_err().field, "total_size");
        let e = PartPlan::by_size(MAX_OBJECT_SIZE + 1, 0).unwrap_err();
        assert_eq!(e.field, "total_size");
        // 10,001 parts of 5 MiB.
        let e = PartPlan::by_size(10_000 * MIN_PART_SIZE + 1, MIN_PART_SIZE).unwrap_err();
        assert_eq!(e.field, "total_size");
    }

    #[test]
    fn a_total_is_cut_into_parts_the_last_one_smaller() {
        let p = PartPlan::by_size(16 * MIB + 1, 0).unwrap();
        assert_eq!((p.count(), p.part_size()), (3, Some(8 * MIB)));
        assert_eq!(p.range(3), Some((16 * MIB, 1)));
        let p = PartPlan::by_size(16 * MIB, 4 * MIB + MIB).unwrap();
        assert_eq!(p.count(), 4);
        assert_eq!(p.range(4), Some((15 * MIB, MIB)));
    }

    #[test]
    fn the_default_part_size_grows_to_fit_5_tib_in_10000_parts() {
        let p = PartPlan::by_size(MAX_OBJECT_SIZE, 0).unwrap();
        assert!(p.count() <= MAX_PARTS);
        let size = p.part_size().unwrap();
        assert_eq!(size % MIB, 0);
        assert!((MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size));
    }
}
