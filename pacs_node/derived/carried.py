"""Which source attributes a derived object carries over (DOMAIN.md section 2).

Patient and study travel whole, with the Specific Character Set their text is encoded in;
a few series and acquisition facts stay true of the derived images and travel too.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

__all__ = [
    "ACQUISITION_EQUIPMENT_KEYWORDS",
    "KEPT_KEYWORDS",
    "PATIENT_STUDY_KEYWORDS",
    "carry_over",
]

#: Root attributes of the Patient (C.7.1.1), Clinical Trial Subject (C.7.1.3), General Study
#: (C.7.2.1), Patient Study (C.7.2.2) and Clinical Trial Study (C.7.2.3) Modules of PS3.3.
PATIENT_STUDY_KEYWORDS = (
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "ReferencedPatientSequence",
    "SourcePatientGroupIdentificationSequence", "GroupOfPatientsIdentificationSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar", "PatientSex",
    "QualityControlSubject", "StrainDescription", "StrainNomenclature", "StrainStockSequence",
    "StrainAdditionalInformation", "StrainCodeSequence", "GeneticModificationsSequence",
    "OtherPatientNames", "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence",
    "EthnicGroupCodeSequence", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID",
    "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingService",
    "RequestingServiceCodeSequence", "ReferencedStudySequence", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
    "PatientSize", "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "PatientWeight", "MedicalAlerts", "Allergies", "Occupation",
    "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
    "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip

#: Facts that stay true of the derived images: what body part, which order they answer, when
#: the source was acquired, and where (General Series C.7.3.1, General Acquisition C.7.10.1,
#: General Equipment C.7.5.1).
KEPT_KEYWORDS = (
    "BodyPartExamined",
    "Laterality",
    "AnatomicalOrientationType",
    "RequestAttributesSequence",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "AcquisitionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
)
#: The camera's identity, for the acquisition item of the Contributing Equipment Sequence.
ACQUISITION_EQUIPMENT_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "StationName",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "SoftwareVersions",
)


def carry_over(source: Dataset, ds: Dataset) -> None:
    """Copy Specific Character Set, the Patient and Study modules and the kept facts.

    Copies are deep, so later edits of ``ds`` never reach ``source``.
    """
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    for keyword in (*PATIENT_STUDY_KEYWORDS, *KEPT_KEYWORDS):
        if keyword in source:
            ds[keyword] = copy.deepcopy(source[keyword])
